"""The GPU data path for training: encoded file bytes from a DataLoader (thread-pool reads), decode +
augment + normalize on the device in batches. Device-agnostic: on CPU it runs the same code (for tests).

Used by train.feed for `data.decode: gpu`: the DataLoader over `EncodedImages` with `collate_encoded` is
sharded by `accelerator.prepare` as usual (a plain dataclass batch, so Accelerate leaves the bytes on the
host), and `engine_batches` turns it into the trainer's (images, labels, notes) tuples on the device.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.jpeg import DecodeStats, decode_files
from core.preprocess import AugmentSpec, EvalSpec, Normalize
from train.gpu_augment import eval_batch, train_batch

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
        self.stats = DecodeStats()  # what went to the CPU decoder and why, reported once per run

    def images_uint8(self, data: Sequence[torch.Tensor], indices: torch.Tensor, epoch: int | torch.Tensor,
                     errors: dict[int, str] | None = None) -> tuple[torch.Tensor, dict[int, str]]:
        """Encoded bytes → uint8 [N, 3, crop, crop] on the device and {position: reason} for bad files."""
        errors = dict(errors or {})
        todo = [k for k in range(len(data)) if k not in errors]
        decoded, bad = decode_files([data[k] for k in todo], self.device, self.stats)
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


_END = object()  # sentinel: the loader has no more batches


def prefetch(batches: Iterable[EncodedBatch], pipeline: GpuPipeline, epoch: int | None = None,
             depth: int = 2) -> Iterator[DeviceBatch]:
    """Run the pipeline up to `depth` batches ahead in a background thread (on its own CUDA stream on GPU).

    The loader itself is pulled here, in the consumer's thread and order. An Accelerate loader's
    `end_of_dataloader` (read by gather_for_metrics to trim the padding of the last distributed batch,
    and by gradient accumulation to sync) is set back to each batch's own value just before that batch
    is handed out, and the loader is not stepped past its last batch until that batch has been used, so
    it stays the active dataloader meanwhile. The consumer's stream waits on an event, not the host.
    """
    side = torch.cuda.Stream(pipeline.device) if pipeline.device.type == "cuda" else None

    def run(raw: EncodedBatch) -> tuple[DeviceBatch, torch.cuda.Event | None]:
        if side is None:
            return pipeline(raw, epoch), None
        with torch.cuda.stream(side):
            out = pipeline(raw, epoch)
            event = torch.cuda.Event()
            event.record(side)
        return out, event

    source = iter(batches)
    pending: deque[tuple[Future, bool | None]] = deque()
    exhausted = False
    pool = ThreadPoolExecutor(1, thread_name_prefix="imgclf-gpu-data")

    def top_up() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) <= depth:
            raw = next(source, _END)
            if raw is _END:
                exhausted = True
                return
            last = getattr(batches, "end_of_dataloader", None)  # Accelerate loaders: True on their last batch
            pending.append((pool.submit(run, raw), last))
            exhausted = bool(last)

    try:
        top_up()
        while pending:
            future, last = pending.popleft()
            top_up()
            item, event = future.result()
            if last is not None:
                batches.end_of_dataloader = last  # type: ignore[attr-defined]
            if event is not None:
                current = torch.cuda.current_stream(pipeline.device)
                current.wait_event(event)
                for t in (item.images, item.labels, item.valid):
                    t.record_stream(current)
            yield item
        for _ in source:  # past the last batch: an Accelerate loader now ends its epoch (and leaves gradient state)
            pass
    finally:  # also when the consumer stops early: drop queued work, wait for the running batch
        pool.shutdown(wait=True, cancel_futures=True)


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
