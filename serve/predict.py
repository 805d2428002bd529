"""Batches → class probabilities on the host, with the device kept busy: the model is launched on batch k
before the host waits for batch k-1's results (and the decode thread is already on batch k+1), and each
batch's probabilities come back in one non_blocking copy into pinned memory, waited for with an event."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch

from serve.backends import Backend
from serve.decode import Batch, DecodePipeline
from serve.discover import Item


class _Launched(NamedTuple):
    batch: Batch
    probs: torch.Tensor | None  # host tensor (pinned when it came from a GPU); None: no decodable image
    done: torch.cuda.Event | None  # set once `probs` holds the copy
    features: np.ndarray | None = None  # --embeddings: the head's input, [n_ok, dim] on the host


def launch(backend: Backend, batch: Batch) -> _Launched:
    """Queue the model and the copy back; returns without waiting for a GPU."""
    if not len(batch.images):
        return _Launched(batch, None, None)
    forward = getattr(backend, "forward", backend)
    probs = torch.softmax(forward(batch.images).float(), dim=1)
    take = getattr(backend, "take_features", None)
    features = take() if take is not None else None  # a host copy (a sync): only with --embeddings
    if probs.device.type != "cuda":
        return _Launched(batch, probs, None, features)
    host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
    host.copy_(probs, non_blocking=True)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(probs.device))
    return _Launched(batch, host, done, features)


def collect(launched: _Launched) -> tuple[Batch, np.ndarray | None, np.ndarray | None]:
    if launched.done is not None:
        launched.done.synchronize()
    probs = None if launched.probs is None else launched.probs.numpy()
    return launched.batch, probs, launched.features


def predictions(
    pipe: DecodePipeline, backend: Backend, items: Iterable[Item], batch_size: int
) -> Iterator[tuple[Batch, np.ndarray | None]]:
    """(batch, probabilities [n_ok, classes] in the batch's image order), one batch behind the model."""
    for batch, probs, _ in predictions_and_features(pipe, backend, items, batch_size):
        yield batch, probs


def predictions_and_features(
    pipe: DecodePipeline, backend: Backend, items: Iterable[Item], batch_size: int
) -> Iterator[tuple[Batch, np.ndarray | None, np.ndarray | None]]:
    """As predictions, with each batch's features [n_ok, dim] (None unless the backend keeps them)."""
    pending: _Launched | None = None
    for batch in pipe.batches(items, batch_size):
        launched = launch(backend, batch)
        if pending is not None:
            yield collect(pending)
        pending = launched
    if pending is not None:
        yield collect(pending)
