"""The GPU data path for training: encoded file bytes from a DataLoader (thread-pool reads), decode +
augment + normalize on the device in batches. Device-agnostic: on CPU it runs the same code (for tests).

Integration (train.data.decode: gpu): build the DataLoader over `EncodedImages` with `collate_encoded`,
let `accelerator.prepare` shard it as usual (a plain dataclass batch, so Accelerate leaves the bytes on
the host), then per step `batch = pipeline(raw, epoch)` gives normalized float images on the device.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.preprocess import AugmentSpec, EvalSpec, Normalize
from train.gpu_augment import eval_batch, train_batch
from train.gpu_decode import decode_batch

# ------------------------------------------------------------------------------ host side: bytes


@dataclass
class EncodedSample:
    data: torch.Tensor  # uint8 [nbytes]; empty when the file could not be read
    label: int
    index: int
    epoch: int = 0
    error: str | None = None


@dataclass
class EncodedBatch:
    """What the DataLoader yields. No `.to()` on purpose: Accelerate's device placement leaves it alone."""

    data: list[torch.Tensor]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], dataset positions: with `epochs`, the key of each image's augmentation
    epochs: torch.Tensor  # int64 [N]
    read_errors: dict[int, str] = field(default_factory=dict)  # position in batch → reason

    def __len__(self) -> int:
        return len(self.data)


def _read(path: str) -> tuple[torch.Tensor, str | None]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return torch.empty(0, dtype=torch.uint8), f"cannot read file: {exc.strerror or exc}"
    if not raw:
        return torch.empty(0, dtype=torch.uint8), "empty file (0 bytes)"
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8), None


class EncodedImages(torch.utils.data.Dataset):
    """(path, label) samples → raw file bytes. `__getitems__` reads a whole batch with a thread pool.

    Keys are an index or an (epoch, index) pair, so train.data's EpochSampler can drive it unchanged.

    Reading is I/O and releases the GIL, so threads overlap it well; the pool is made lazily per process
    so DataLoader worker processes each get their own.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], threads: int = 8):
        self.samples = [(os.fspath(p), int(y)) for p, y in samples]
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> EncodedSample:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        path, label = self.samples[i]
        data, error = _read(path)
        return EncodedSample(data, label, i, epoch, error)

    def __getitems__(self, indices: list) -> list[EncodedSample]:
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = ThreadPoolExecutor(self.threads, thread_name_prefix="imgclf-read"), os.getpid()
        return list(self._pool.map(self.__getitem__, indices))

    def __getstate__(self) -> dict:  # a pool cannot cross into worker processes
        return {**self.__dict__, "_pool": None, "_pid": -1}


def collate_encoded(samples: list[EncodedSample]) -> EncodedBatch:
    return EncodedBatch(
        data=[s.data for s in samples],
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        epochs=torch.tensor([s.epoch for s in samples], dtype=torch.int64),
        read_errors={k: s.error for k, s in enumerate(samples) if s.error},
    )


# ------------------------------------------------------------------------------ device side


@dataclass
class DeviceBatch:
    images: torch.Tensor  # float [N, 3, crop, crop] normalized (uint8 with normalize=False), on the device
    labels: torch.Tensor  # int64 [N] on the device
    valid: torch.Tensor  # bool [N] on the device; False where the file was bad (image zero-filled)
    bad: list[tuple[int, str]]  # (dataset index, reason) of the bad files in this batch


class GpuPipeline:
    """decode (nvJPEG on CUDA) → augment (train) or resize + center crop (eval) → normalize, per batch.

    Bad files keep their slot (zero image, valid=False) so the batch shape stays static for
    torch.compile and DDP; weight the loss with `valid` or drop them with `images[valid]`.
    """

    def __init__(self, spec: EvalSpec, device: torch.device | str, aug: AugmentSpec | None = None,
                 seed: int = 0, channels_last: bool = False, normalize: bool = True):
        self.spec, self.aug, self.seed = spec, aug, seed
        self.device = torch.device(device)
        # normalize=False hands out uint8 batches, for a loop that normalizes itself (train.engine's prepare)
        self.normalize = Normalize(spec.mean, spec.std).to(self.device) if normalize else None
        self.channels_last = channels_last

    def images_uint8(self, data: Sequence[torch.Tensor], indices: torch.Tensor, epoch: int | torch.Tensor,
                     errors: dict[int, str] | None = None) -> tuple[torch.Tensor, dict[int, str]]:
        """Encoded bytes → uint8 [N, 3, crop, crop] on the device and {position: reason} for bad files."""
        errors = dict(errors or {})
        todo = [k for k in range(len(data)) if k not in errors]
        decoded, bad = decode_batch([data[k] for k in todo], self.device)
        errors.update({todo[k]: reason for k, reason in bad.items()})
        good = [k for k in todo if k not in errors]
        crop = self.spec.crop
        out = torch.zeros(len(data), 3, crop, crop, dtype=torch.uint8, device=self.device)
        if good:
            images = [img for img in decoded if img is not None]
            keep = torch.tensor(good)
            ep = epoch[keep] if isinstance(epoch, torch.Tensor) else epoch
            batch = (train_batch(images, indices[keep], self.seed, ep, self.aug, self.spec) if self.aug
                     else eval_batch(images, self.spec))
            out[torch.tensor(good, device=self.device)] = batch
        return out, errors

    def __call__(self, batch: EncodedBatch, epoch: int | None = None) -> DeviceBatch:
        """`epoch` overrides the batch's own epochs (those come from an (epoch, index) sampler)."""
        images, errors = self.images_uint8(batch.data, batch.indices, batch.epochs if epoch is None else epoch,
                                           batch.read_errors)
        x = self.normalize(images) if self.normalize is not None else images
        if self.channels_last and self.normalize is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        valid = torch.ones(len(batch), dtype=torch.bool)
        valid[list(errors)] = False
        bad = [(int(batch.indices[k]), reason) for k, reason in sorted(errors.items())]
        return DeviceBatch(x, batch.labels.to(self.device, non_blocking=True),
                           valid.to(self.device, non_blocking=True), bad)


# ------------------------------------------------------------------------------ overlap with the step


def prefetch(batches: Iterable[EncodedBatch], pipeline: GpuPipeline, epoch: int | None = None,
             depth: int = 2) -> Iterator[DeviceBatch]:
    """Run the pipeline `depth` batches ahead in a background thread (on its own CUDA stream on GPU).

    The consumer's stream waits on an event instead of the host, so no step blocks on data that is
    already being prepared; tensors are marked as used by the consumer's stream before it sees them.
    """
    cuda = pipeline.device.type == "cuda"
    side = torch.cuda.Stream(pipeline.device) if cuda else None
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for raw in batches:
                if side is None:
                    out, event = pipeline(raw, epoch), None
                else:
                    with torch.cuda.stream(side):
                        out = pipeline(raw, epoch)
                        event = torch.cuda.Event()
                        event.record(side)
                if not put((out, event)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the consumer thread
            put((exc, None))

    worker = threading.Thread(target=produce, name="imgclf-gpu-data", daemon=True)
    worker.start()
    try:
        while True:
            item, event = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            if event is not None:
                current = torch.cuda.current_stream(pipeline.device)
                current.wait_event(event)
                for t in (item.images, item.labels, item.valid):
                    t.record_stream(current)
            yield item
    finally:  # also when the consumer stops early: let the producer thread finish
        stop.set()
        worker.join()


def engine_batches(batches: Iterable[EncodedBatch], pipeline: GpuPipeline, name: Callable[[int], str],
                   ignore_label: int | None = None, depth: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The (images, labels, bad notes) tuples train.engine takes from its CPU loaders, from the GPU path.

    Bad files become notes `"<name>\t<reason>"`. Training (ignore_label None) drops them like
    collate_train; evaluation keeps the zero image with `ignore_label`, like collate_eval, so every
    batch keeps its size for gather_for_metrics. Images are whatever the pipeline makes (uint8 when
    built with normalize=False, so the engine's own prepare() still normalizes).
    """
    for b in prefetch(batches, pipeline, depth=depth):
        notes = [f"{name(i)}\t{reason}" for i, reason in b.bad]
        if not b.bad:
            yield b.images, b.labels, notes
        elif ignore_label is None:
            yield b.images[b.valid], b.labels[b.valid], notes
        else:
            yield b.images, torch.where(b.valid, b.labels, ignore_label), notes


def resolve_decode(mode: str, device: torch.device | str) -> str:
    """`data.decode` → 'gpu' or 'cpu': auto picks the GPU path when training runs on CUDA."""
    choices = {"cpu": "cpu", "gpu": "gpu", "auto": "gpu" if torch.device(device).type == "cuda" else "cpu"}
    return choices[mode]


__all__ = ["DeviceBatch", "EncodedBatch", "EncodedImages", "EncodedSample", "GpuPipeline", "collate_encoded",
           "engine_batches", "prefetch", "resolve_decode"]
