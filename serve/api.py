"""The Python way in: classify image files, URLs or PIL images with a bundle, model.onnx or model.engine,
with serve's preprocessing and serve's numbers (the same rows the CSV holds).

    from serve.api import Classifier
    clf = Classifier("export/model.onnx")
    for p in clf.predict(["a.jpg", pil_image]):
        print(p.display_name, p.probability, p.accepted)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import UserError
from core.images import BadImage, decode_image, upright_rgb
from core.preprocess import eval_transform
from serve.accept import check_accept_above, is_accepted
from serve.backends import default_batch_size, load_record, open_backend, resolve_device
from serve.discover import MAX_FILE_MB, is_url, iter_items
from serve.model_file import resolve_model
from serve.sources import SourceError, read_bytes
from serve.writer import Layout, error_row, ok_row

ImageInput = str | os.PathLike | Image.Image


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `source` is the path or URL as given (None for an in-memory image); on an
    image that could not be read or decoded, `error` says why and the label fields are None."""

    source: str | None
    label: str | None
    display_name: str | None
    probability: float | None
    topk: list[tuple[str, str, float]]  # (label, display name, probability), best first
    accepted: bool
    error: str | None = None


class Classifier:
    """A model opened once; `predict` classifies any number of images in batches."""

    def __init__(
        self,
        model: str | os.PathLike,
        device: str = "auto",
        topk: int = 5,
        batch_size: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        allow_cpu: bool = False,
        timeout: float = 10.0,
        max_file_mb: float = MAX_FILE_MB,
        accept_above: float | None = None,
    ):
        check_accept_above(accept_above)
        if topk <= 0 or (batch_size is not None and batch_size <= 0):
            raise UserError(f"topk and batch_size must be positive (got {topk}, {batch_size})")
        self.model = resolve_model(model)
        record = load_record(self.model)
        # accept_above overrides the model's calibrated threshold (None: no calibration, or unreachable)
        self.threshold: float | None = record.threshold if accept_above is None else accept_above
        # the rows carry `accepted` as serve's files do (serve.accept.is_accepted, in writer.ok_row)
        self.layout = Layout(
            tuple(record.classes), tuple(record.display_names), topk, threshold=self.threshold
        )
        self.transform = eval_transform(record.preprocess)
        self.backend = open_backend(self.model, resolve_device(device), providers, allow_cpu, threads)
        self.batch_size = batch_size or default_batch_size(self.backend.device)
        self.timeout, self.max_bytes = timeout, int(max_file_mb * 2**20)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.layout.classes

    def predict(self, images: Iterable[ImageInput]) -> list[Prediction]:
        """One Prediction per image, in order."""
        loaded = [self._load(x) for x in images]
        ok = [i for i, (_, tensor, _) in enumerate(loaded) if tensor is not None]
        probs = self._probabilities([loaded[i][1] for i in ok])
        by_index = dict(zip(ok, probs))
        return [self._prediction(name, by_index.get(i), error) for i, (name, _, error) in enumerate(loaded)]

    def _load(self, x: ImageInput) -> tuple[str | None, torch.Tensor | None, str]:
        """(source, uint8 [3, crop, crop] or None, error): serve's CPU decode, image by image."""
        if isinstance(x, Image.Image):
            return None, self.transform(upright_rgb(x)), ""
        text = os.fspath(x)
        if not is_url(text) and os.path.isdir(text):
            raise UserError(f"{text} is a folder; predict takes image files, URLs or PIL images")
        item = next(iter_items([text], max_bytes=self.max_bytes))
        try:
            if item.error:
                raise BadImage(item.error)
            return text, self.transform(decode_image(read_bytes(item, self.timeout))), ""
        except (SourceError, BadImage) as exc:
            return text, None, str(exc)

    def _probabilities(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(tensors), self.batch_size):
            batch = torch.stack(tensors[start : start + self.batch_size])
            out.extend(torch.softmax(self.backend(batch).float(), dim=1).numpy())
        return out

    def _prediction(self, source: str | None, probs: np.ndarray | None, error: str) -> Prediction:
        row: dict[str, Any] = (
            ok_row(self.layout, source or "", probs)
            if probs is not None
            else error_row(self.layout, source or "", error)
        )
        labels_col, probs_col = self.layout.topk_columns
        names = dict(zip(self.layout.classes, self.layout.display_names))
        return Prediction(
            source=source,
            label=row["label"],
            display_name=row["display_name"],
            probability=row["prob"],
            topk=[(label, names[label], p) for label, p in zip(row[labels_col], row[probs_col])],
            accepted=bool(row["accepted"]),  # an error row's None: never accepted
            error=error or None,
        )


__all__ = ["Classifier", "Prediction", "is_accepted"]
