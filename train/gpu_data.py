"""The GPU data path for training: encoded file bytes from a DataLoader (train.encoded: thread-pool reads),
decode + augment + normalize on the device in batches. Device-agnostic: on CPU it runs the same code (for
tests).

Used by train.feed for `data.decode: gpu`: the DataLoader over `EncodedImages` with `collate_encoded` is
sharded by `accelerator.prepare` as usual (a plain dataclass batch, so Accelerate leaves the bytes on the
host), and `engine_batches` turns it into the trainer's (images, labels, notes) tuples on the device.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from core.images import BadImage, exif_transpose_tensor
from core.jpeg import REFUSED, DecodeStats, decode_cpu, decode_on_device, resize_refusal
from core.preprocess import AugmentSpec, EvalSpec, Normalize
from core.streams import CUDA_STREAMS, CudaStreams, normal_device
from train.encoded import EncodedBatch, EncodedImages, EncodedSample, collate_encoded  # re-exported
from train.gpu_augment import Uploads, eval_batch, train_batch

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

    def __init__(
        self,
        spec: EvalSpec,
        device: torch.device | str,
        aug: AugmentSpec | None = None,
        seed: int = 0,
        channels_last: bool = False,
        normalize: bool = True,
        streams: CudaStreams = CUDA_STREAMS,
        uploads: Uploads | None = None,
    ):
        self.spec, self.aug, self.seed = spec, aug, seed
        self.device = normal_device(device)
        self.streams = streams
        self._sides: tuple[Any, Any] | None = None  # (decode stage, augment stage): see side_streams
        self.uploads = uploads if uploads is not None else Uploads()  # host → device copies, counted
        # normalize=False hands out uint8 batches, for a loop that normalizes itself (train.engine's prepare)
        self.normalize = Normalize(spec.mean, spec.std).to(self.device) if normalize else None
        self.channels_last = channels_last
        self.stats = DecodeStats()  # what went to the CPU decoder and why, reported once per run

    @property
    def bounded(self) -> bool:
        """Whether the output comes from the eval resize (the shorter side scaled to spec.resize), which
        core.images bounds (issue 19 M1). The train augment samples a crop box inside the image and only
        ever shrinks it toward the output size, so its canvas is bounded by the crop, not the image."""
        return not (self.aug is not None and self.aug.enabled)

    def _refusals(self, sizes: dict[int, Sequence[int]]) -> dict[int, str]:
        """{position: reason} for the upright (H, W) sizes whose resize would pass the bound; the reason
        starts with core.images.TOO_ELONGATED, so evaluation counts them apart from undecodable files."""
        resize, crop = self.spec.resize, self.spec.crop
        reasons = {k: resize_refusal(int(h), int(w), resize, crop) for k, (h, w) in sizes.items()}
        return {k: why for k, why in reasons.items() if why is not None}

    def side_streams(self) -> tuple[Any, Any]:
        """The decode stage's and the augment stage's streams (None, None on a CPU), created once per
        pipeline: a prefetch per epoch drawing new pool streams would walk PyTorch's 32-stream pool."""
        if self._sides is None:
            self._sides = (self.streams.side(self.device), self.streams.side(self.device))
        return self._sides

    def decode(self, batch: EncodedBatch) -> tuple[list[torch.Tensor | None], dict[int, str]]:
        """The batch's images as uint8 [3, H, W] on the device (None where bad) and {position: reason}.

        JPEGs the workers left as bytes go through core.jpeg's device decode (its stream protocol makes
        the outputs safe on the current stream); a file the device decoder refuses falls back to PIL here.
        """
        errors = dict(batch.read_errors)
        out: list[torch.Tensor | None] = [None] * len(batch)
        shapes = batch.shapes.tolist()
        for k, reason in batch.cpu_reasons.items():
            self.stats.add(reason)
            if k not in errors:  # decoded by the worker
                out[k] = self.uploads.put(batch.blob(k).view(shapes[k]), self.device)
        todo = [k for k in range(len(batch)) if k not in errors and shapes[k][0] == 0]
        if self.bounded:  # the header knows the size: a panorama past the bound is never decoded
            headers = batch.header_hw.tolist()
            errors.update(self._refusals({k: headers[k] for k in todo}))
            todo = [k for k in todo if k not in errors]
        orientation = batch.orientations.tolist()
        blobs = [batch.blob(k) for k in todo]
        for k, img in zip(todo, decode_on_device(blobs, self.device, streams=self.streams)):
            self.stats.add(None if img is not None else REFUSED)
            try:
                out[k] = (
                    exif_transpose_tensor(img, orientation[k])
                    if img is not None
                    else self.uploads.put(decode_cpu(batch.blob(k)), self.device)
                )
            except BadImage as exc:
                errors[k] = str(exc)
        return out, errors

    def images_uint8(
        self, batch: EncodedBatch, epoch: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[int, str]]:
        """The batch → uint8 [N, 3, crop, crop] on the device and {position: reason} for bad files."""
        return self.augment(batch, *self.decode(batch), epoch)

    def augment(
        self,
        batch: EncodedBatch,
        decoded: list[torch.Tensor | None],
        errors: dict[int, str],
        epoch: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[int, str]]:
        """Decoded images → uint8 [N, 3, crop, crop] (zeros where bad); the second stage of the feed."""
        epoch = batch.epochs if epoch is None else epoch
        if self.bounded:  # the decoded shapes decide (CPU-decoded files had no header check)
            shapes = {
                k: img.shape[-2:] for k, img in enumerate(decoded) if img is not None and k not in errors
            }
            errors = {**errors, **self._refusals(shapes)}
        good = [k for k in range(len(batch)) if k not in errors]
        crop = self.spec.crop
        out = torch.zeros(len(batch), 3, crop, crop, dtype=torch.uint8, device=self.device)
        if good:
            images = [decoded[k] for k in good]
            keep = torch.tensor(good)
            ep = epoch[keep] if isinstance(epoch, torch.Tensor) else epoch
            done = (
                train_batch(images, batch.indices[keep], self.seed, ep, self.aug, self.spec, self.uploads)
                if self.aug
                else eval_batch(images, self.spec)
            )
            if len(good) == len(batch):
                out = done
            else:
                out[torch.tensor(good, device=self.device)] = done
        return out, errors

    def __call__(self, batch: EncodedBatch, epoch: int | None = None) -> DeviceBatch:
        """`epoch` overrides the batch's own epochs (those come from an (epoch, index) sampler)."""
        return self.finish(batch, *self.decode(batch), epoch)

    def finish(
        self,
        batch: EncodedBatch,
        decoded: list[torch.Tensor | None],
        errors: dict[int, str],
        epoch: int | None = None,
    ) -> DeviceBatch:
        """The augment stage: decoded images → the DeviceBatch the step takes."""
        images, errors = self.augment(batch, decoded, errors, epoch)
        x = self.normalize(images) if self.normalize is not None else images
        if self.channels_last and self.normalize is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        valid = torch.ones(len(batch), dtype=torch.int64)
        valid[list(errors)] = 0
        bad = [(int(batch.indices[k]), reason) for k, reason in sorted(errors.items())]
        labels_valid = self.uploads.put(torch.stack([batch.labels, valid]), self.device)  # one pinned copy
        return DeviceBatch(x, labels_valid[0], labels_valid[1].bool(), bad)


# ------------------------------------------------------------------------------ overlap with the step


_END = object()  # sentinel: the loader has no more batches
DECODED_AHEAD = 2  # decoded batches waiting for (or in) the augment stage


def _pull_limit(batches: Iterable) -> int | float:
    """How many batches the background thread may pull itself.

    An Accelerate loader flips the shared `end_of_dataloader` flag (read by gather_for_metrics and by
    gradient accumulation) inside the call that returns its LAST batch. That call must happen in the
    consumer's thread, between its steps, or the flag would flip under a step that is not the last one;
    so with such a loader the thread pulls all but the last batch. Other iterables: everything.
    """
    if not hasattr(batches, "end_of_dataloader"):
        return float("inf")
    try:
        return max(len(batches) - 1, 0)  # type: ignore[arg-type]
    except TypeError:
        return 0


def prefetch(
    batches: Iterable[EncodedBatch], pipeline: GpuPipeline, epoch: int | None = None, depth: int = 2
) -> Iterator[DeviceBatch]:
    """Pull from the loader and run the pipeline up to `depth` batches ahead in two background stages, on
    their own CUDA streams on GPU, so the training thread does not block on loader IPC, decode or
    augmentation: a decode thread (nvJPEG calls block the host) feeds an augment thread, so batch k+1 is
    decoded while batch k is augmented. The streams are the pipeline's own, made once (side_streams).

    Accelerate loaders (see _pull_limit): the last batch is pulled in the consumer's thread, and each
    batch's own `end_of_dataloader` is set back just before it is handed out, so the flag is right while
    that batch is used. The loader is not stepped past its last batch until that batch has been used, so it
    stays the active dataloader meanwhile. The consumer's stream waits on an event, never the host.
    """
    streams = pipeline.streams
    decode_side, augment_side = pipeline.side_streams()
    source, limit, pulled = iter(batches), _pull_limit(batches), 0
    pull_lock = threading.Lock()  # a generator cannot be advanced from two threads at once
    # batches decoded and not yet augmented: bounds the full-resolution images held (256 photos of 12 MP
    # are ~9 GB), so the decode stage runs one batch ahead of augmentation, not `depth`
    decoded_slots, stopping = threading.Semaphore(DECODED_AHEAD), threading.Event()

    def pull() -> tuple[Any, bool | None]:
        with pull_lock:
            raw = next(source, _END)
            return raw, getattr(batches, "end_of_dataloader", None)  # Accelerate: True on its last batch

    def run_decode(pulled_raw: Future) -> tuple[Any, bool | None]:
        raw, last = pulled_raw.result()
        if raw is _END:
            return None, last
        while not decoded_slots.acquire(timeout=0.1):
            if stopping.is_set():  # the consumer left: nobody will free a slot
                raise RuntimeError("prefetch stopped")
        with streams.use(decode_side):  # core.jpeg refuses if this stream were its decode stream
            decoded, errors = pipeline.decode(raw)
            ready = streams.record(decode_side)
        return (raw, decoded, errors, ready), last

    def run_augment(decoding: Future) -> tuple[Any, bool | None]:
        got, last = decoding.result()
        if got is None:
            return None, last
        raw, decoded, errors, ready = got
        try:
            with streams.use(augment_side):
                # the decoded images were made on the decode stage's stream and are freed on this one
                streams.hand_over(ready, augment_side, [img for img in decoded if img is not None])
                out = pipeline.finish(raw, decoded, errors, epoch)
                done = streams.record(augment_side)
        finally:
            decoded_slots.release()
        return (out, done), last

    pending: deque[Future] = deque()
    exhausted, last_pull = False, None
    loads = ThreadPoolExecutor(1, thread_name_prefix="imgclf-load")  # loader IPC, unpickling
    decodes = ThreadPoolExecutor(1, thread_name_prefix="imgclf-gpu-decode")
    augments = ThreadPoolExecutor(1, thread_name_prefix="imgclf-gpu-augment")

    def top_up() -> None:
        nonlocal exhausted, pulled, last_pull
        while not exhausted and len(pending) <= depth:
            if pulled < limit:
                last_pull = loads.submit(pull)
            else:  # in this thread (see _pull_limit), after the background pulls, in order
                if last_pull is not None:
                    last_pull.result()
                raw, last = pull()
                if raw is _END:
                    exhausted = True
                    return
                last_pull = Future()
                last_pull.set_result((raw, last))
                exhausted = bool(last)
            pending.append(augments.submit(run_augment, decodes.submit(run_decode, last_pull)))
            pulled += 1

    try:
        top_up()
        while pending:
            done, last = pending.popleft().result()
            if done is None:  # the background pull found the end
                exhausted = True
                continue
            exhausted = exhausted or bool(last)
            top_up()
            item, event = done
            if last is not None:
                batches.end_of_dataloader = last  # type: ignore[attr-defined]
            # made on the augment stream, used and freed on the consumer's
            streams.hand_over(event, streams.current(pipeline.device), (item.images, item.labels, item.valid))
            yield item
        for _ in (
            source
        ):  # past the last batch: an Accelerate loader now ends its epoch (and leaves gradient state)
            pass
    finally:  # also when the consumer stops early: drop queued work, wait for the running batch
        stopping.set()
        augments.shutdown(wait=True, cancel_futures=True)
        decodes.shutdown(wait=True, cancel_futures=True)
        loads.shutdown(wait=True, cancel_futures=True)


def engine_batches(
    batches: Iterable[EncodedBatch],
    pipeline: GpuPipeline,
    name: Callable[[int], str],
    ignore_label: int = -1,
    depth: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The (images, labels, bad notes) tuples train.engine takes from its CPU loaders, from the GPU path.

    Bad files become notes `"<name>\t<reason>"` and keep their slot (zero image, label `ignore_label`),
    like collate_train/collate_eval: every batch keeps its size (no recompile under torch.compile, no
    host sync to drop rows, exact gather_for_metrics). Images are whatever the pipeline makes (uint8 when
    built with normalize=False, so the engine's own prepare() still normalizes).
    """
    for b in prefetch(batches, pipeline, depth=depth):
        notes = [f"{name(i)}\t{reason}" for i, reason in b.bad]
        yield b.images, (torch.where(b.valid, b.labels, ignore_label) if b.bad else b.labels), notes


def resolve_decode(mode: str, device: torch.device | str) -> str:
    """`data.decode` → 'gpu' or 'cpu': auto picks the GPU path when training runs on CUDA."""
    choices = {"cpu": "cpu", "gpu": "gpu", "auto": "gpu" if torch.device(device).type == "cuda" else "cpu"}
    return choices[mode]


__all__ = [
    "DeviceBatch",
    "EncodedBatch",
    "EncodedImages",
    "EncodedSample",
    "GpuPipeline",
    "collate_encoded",
    "engine_batches",
    "prefetch",
    "resolve_decode",
]
