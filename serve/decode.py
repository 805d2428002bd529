"""Bytes → uint8 [3, crop, crop] batches, streaming with bounded look-ahead: JPEGs decoded on the GPU
with nvJPEG when there is one, everything else (and everything on a CPU machine) by core's robust
decoder and the training eval transform in worker processes. A bad file becomes an error string.

Decoding runs in its own thread (and CUDA stream), so batch k+1 is decoded while the model runs batch k.
"""

from __future__ import annotations

import functools
import itertools
import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image

from core.images import EXIF_TRANSPOSE, BadImage, decode_image, exif_transpose_tensor
from core.jpeg import REFUSED, DecodeStats, JpegRoute, decode_on_device, resize_refusal, route_jpeg
from core.preprocess import EvalSpec, eval_transform, interpolation_mode
from core.resize import eval_resize_crop
from core.streams import CUDA_STREAMS, CudaStreams, normal_device
from serve.budget import MAX_INFLIGHT_MB, ByteBudget
from serve.discover import Item
from serve.sources import SourceError, read_bytes
from serve.workers import DecodeWorkers

T = TypeVar("T")
CropKey = tuple[
    int, int, str
]  # (resize, crop, interpolation): all decoding needs; normalization is on the device

ORIENT = EXIF_TRANSPOSE  # EXIF orientation → the tensor op PIL's ImageOps.exif_transpose applies


def spec_key(spec: EvalSpec) -> CropKey:
    return (spec.resize, spec.crop, spec.interpolation)


# ─── CPU path: exactly the training eval transform ────────────────────────────────────────────


@functools.lru_cache(maxsize=4)
def _transform(key: CropKey) -> Callable[[Image.Image], torch.Tensor]:
    return eval_transform(EvalSpec(resize=key[0], crop=key[1], interpolation=key[2]))


def cpu_decode(data: bytes, key: CropKey) -> np.ndarray | str:
    """core.images.decode_image + core.preprocess.eval_transform; any failure is returned as a reason."""
    try:
        return _transform(key)(decode_image(data)).contiguous().numpy()
    except BadImage as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad file must become a row, never end the run
        return f"cannot preprocess image ({type(exc).__name__}: {exc})"


def cpu_decode_many(datas: list[bytes], key: CropKey) -> list[np.ndarray | str]:
    return [cpu_decode(d, key) for d in datas]


# ─── GPU path: core.jpeg's router and nvJPEG decode, then one batched resize/crop (core.resize) ────

orient = exif_transpose_tensor


def resize_crop(image: torch.Tensor, key: CropKey) -> torch.Tensor:
    """The eval transform's tensor ops (Resize shorter side, antialias, then CenterCrop) on any device;
    `image` is [3, H, W] or a batch [N, 3, H, W] of one size."""
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, [key[0]], interpolation=interpolation_mode(key[2]), antialias=True)
    return TF.center_crop(image, [key[1], key[1]])


def resize_crop_batch(images: list[torch.Tensor], key: CropKey) -> torch.Tensor:
    """[n, 3, crop, crop] uint8 for images of any sizes, in order: ONE batched resize+crop call for the
    whole batch however many distinct sizes (core.resize), equal to `resize_crop` per image within 1 level
    (see core.resize for the bounds)."""
    return eval_resize_crop(images, key[0], key[1], key[2])


def _index(positions: list[int], device: torch.device) -> torch.Tensor:
    """Positions on `device`; pinned first on CUDA, so the copy does not block the decode thread."""
    index = torch.tensor(positions, dtype=torch.long)
    return (index.pin_memory() if device.type == "cuda" else index).to(device, non_blocking=True)


def gpu_decode(
    datas: list[bytes],
    orientations: list[int],
    key: CropKey,
    device: torch.device,
    streams: CudaStreams = CUDA_STREAMS,
) -> list[torch.Tensor | str | None]:
    """Decode (core.jpeg: chunked, bisected, stream-safe), orient, resize and crop JPEG bytes on `device`:
    a crop per image; None where the decoder refuses (the CPU decoder's turn); the reason, as the CPU
    path words it, where the upright image is too elongated to resize within core.images' bound (its
    shape is host metadata: checked before the resize, with no device sync)."""
    blobs = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    decoded = decode_on_device(blobs, device, streams=streams)
    result: list[torch.Tensor | str | None] = [None] * len(datas)
    upright: dict[int, torch.Tensor] = {}
    for i, img in enumerate(decoded):
        if img is not None:
            img = orient(img, orientations[i])
            refusal = resize_refusal(int(img.shape[-2]), int(img.shape[-1]), key[0], key[1])
            if refusal is None:
                upright[i] = img
            else:
                result[i] = refusal
    for i, crop in zip(upright, resize_crop_batch(list(upright.values()), key)):
        result[i] = crop
    return result


# ─── the streaming pipeline ───────────────────────────────────────────────────────────────────


@dataclass
class Batch:
    items: list[Item]
    images: torch.Tensor  # uint8 [n_ok, 3, crop, crop] on the pipeline's device, in item order
    errors: list[str]  # one per item: "" for items in `images`, else the reason
    ready: torch.cuda.Event | None = None  # recorded on the decode stream once `images` is written


class _Loaded(NamedTuple):
    data: bytes | None  # kept only for device decoding (parked in the byte budget)
    error: str
    route: JpegRoute | None  # None: no device decoding in this pipeline
    decoded: Callable[[], list] | None = None  # CPU decoding, started by the reader: () -> [result]

    @property
    def device(self) -> bool:
        return self.data is not None and self.route is not None and self.route.device


_DONE = object()


class DecodePipeline:
    """items → Batch stream. Reads run in a thread pool, CPU decoding in `workers` processes (0: inline),
    device decoding and batch assembly in one decode thread with its own CUDA stream. At most `depth`
    batches are read and `depth` decoded ahead of the one being consumed, so memory stays flat however
    many files the stream holds."""

    def __init__(
        self,
        spec: EvalSpec,
        device: str | torch.device = "cpu",
        workers: int = 0,
        threads: int = 8,
        timeout: float = 10.0,
        gpu_decode: bool | None = None,
        depth: int = 2,
        max_inflight_bytes: int = MAX_INFLIGHT_MB * 2**20,
        streams: CudaStreams = CUDA_STREAMS,
    ):
        self.key, self.crop = spec_key(spec), spec.crop
        self.workers, self.timeout, self.depth = workers, timeout, depth
        self.procs = DecodeWorkers(workers) if workers > 0 else None  # fork before any thread or CUDA
        self.threads = ThreadPoolExecutor(max(1, threads), thread_name_prefix="imgclf-read")
        self.stats = DecodeStats()  # what the device decoded, what went to the CPU and why
        self.budget = ByteBudget(max_inflight_bytes)  # bytes read, not yet decoded (serve.budget)
        self._running: list[tuple[threading.Thread, threading.Event]] = []  # decode threads, their stop flags
        self.streams = streams
        self._side = None  # the decode thread's stream, made once per pipeline and device (see side_stream)
        self.to(device, gpu_decode)

    def to(self, device: str | torch.device, gpu_decode: bool | None = None) -> DecodePipeline:
        """Decode for a model on `device` (the backend's: a CPU-only onnxruntime on a GPU machine → CPU)."""
        self.device = torch.device(device)
        if self.device.type == "cuda" and torch.cuda.is_available():
            self.device = normal_device(self.device)  # the decode thread must not guess it
        self._side = None
        self.gpu = (self.device.type == "cuda") if gpu_decode is None else gpu_decode
        self.pin = self.device.type == "cuda"
        return self

    def __enter__(self) -> DecodePipeline:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(abort=exc_type is not None)

    def close(self, abort: bool = False) -> None:
        """abort (Ctrl-C, an error): stop at once, without waiting for queued reads or decodes."""
        for _, stop in self._running:
            stop.set()
        self.budget.close()  # readers waiting for room give up instead of holding the exit
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self.procs is not None:
            self.procs.close(abort=abort)
        for thread, _ in self._running:  # a daemon: one stuck in a slow read does not hold the exit
            thread.join(timeout=1 if abort else 10)

    def describe(self) -> str:
        cpu = f"{self.workers} CPU worker process(es)" if self.workers else "CPU decoding in the main process"
        return ("nvJPEG on " + str(self.device) + " for JPEGs, " if self.gpu else "") + cpu

    def report(self) -> str:
        """Once per run: a GPU run that quietly decoded on the CPU is a defect, so say how much did."""
        return self.stats.summary() if self.gpu else ""

    def batches(self, items: Iterable[Item], batch_size: int) -> Iterator[Batch]:
        out: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._produce, args=(items, batch_size, out, stop), name="imgclf-decode", daemon=True
        )
        self._running.append((thread, stop))
        thread.start()
        try:
            while (batch := out.get()) is not _DONE:
                if isinstance(batch, BaseException):
                    raise batch
                yield self._hand_over(batch)
        finally:  # also when the consumer stops early: the decode thread must not wait for it forever
            stop.set()

    def side_stream(self):
        """The decode thread's stream: one per pipeline (not per `batches()` call, which would walk
        PyTorch's 32-stream pool); None on a CPU. core.jpeg refuses to decode should it be the decode
        stream."""
        if self._side is None and self.device.type == "cuda":
            self._side = self.streams.side(self.device)
        return self._side

    def _hand_over(self, batch: Batch) -> Batch:
        """The consumer's stream waits for the decode thread's stream; record_stream keeps the allocator
        from reusing `images` before the consumer's kernels have read it."""
        if batch.ready is not None:
            self.streams.hand_over(batch.ready, self.streams.current(self.device), [batch.images])
        return batch

    def _produce(
        self, items: Iterable[Item], batch_size: int, out: queue.Queue, stop: threading.Event
    ) -> None:
        cuda = self.device.type == "cuda"
        try:
            if cuda:  # the current device is per thread: a new thread starts on GPU 0
                torch.cuda.set_device(self.device)
            side = self.side_stream()
            with self.streams.use(side):
                reads = (self._submit_reads(chunk) for chunk in _chunks(items, batch_size))
                decodes = (self._submit_decodes(*r) for r in _ahead(reads, self.depth))
                for pending in _ahead(decodes, self.depth):
                    batch = self._finish(*pending)
                    batch.ready = self.streams.record(side)
                    if not _put(out, batch, stop):
                        return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            _put(out, exc, stop)
            return
        _put(out, _DONE, stop)

    def _load(self, item: Item) -> _Loaded:
        if item.error:
            return _Loaded(None, item.error, None)
        try:
            data = read_bytes(item, self.timeout, self.budget)  # held in the budget until decoded
        except SourceError as exc:
            return _Loaded(None, str(exc), None)
        route = route_jpeg(data) if self.gpu else None
        if route is not None and route.device:
            # the header knows the size: a panorama past the resize bound is a row before any decode
            refusal = resize_refusal(route.height, route.width, *self.key[:2], route.orientation)
            if refusal is not None:
                self.budget.release(len(data))
                return _Loaded(None, refusal, route)
            self.budget.park(len(data))  # freed when its batch is finished (_finish)
            return _Loaded(data, "", route)
        return _Loaded(None, "", route, self._decode_cpu(data))

    def _decode_cpu(self, data: bytes) -> Callable[[], list]:
        """Start this file's CPU decode now, from the reader, so its bytes leave the budget as soon as it
        is decoded, not when its whole batch is (a batch of large files would not fit the budget)."""
        n = len(data)
        if self.procs is None:
            try:
                result = cpu_decode(data, self.key)
            finally:
                self.budget.release(n)
            return lambda: [result]
        future = self.procs.submit(cpu_decode_many, [data], self.key)
        future.add_done_callback(lambda _: self.budget.release(n))  # also when cancelled
        return future.result

    def _submit_reads(self, chunk: list[Item]) -> tuple[list[Item], list[Future]]:
        return chunk, [self.threads.submit(self._load, item) for item in chunk]

    def _submit_decodes(self, chunk: list[Item], futures: list[Future]):
        loaded = [f.result() for f in futures]
        cpu = [i for i, x in enumerate(loaded) if x.decoded is not None]
        for i in cpu:
            if loaded[i].route is not None:
                self.stats.add(loaded[i].route.reason)
        return chunk, loaded, cpu, [loaded[i].decoded for i in cpu]

    def _submit_cpu(self, datas: list) -> list[Callable[[], list]]:
        if not datas:
            return []
        if self.procs is None:
            return [functools.partial(cpu_decode_many, datas, self.key)]
        size = max(4, math.ceil(len(datas) / self.workers))
        return [
            self.procs.submit(cpu_decode_many, datas[i : i + size], self.key).result
            for i in range(0, len(datas), size)
        ]

    def _finish(self, chunk: list[Item], loaded: list[_Loaded], cpu: list[int], jobs: list) -> Batch:
        results: list[torch.Tensor | np.ndarray | str | None] = [x.error or None for x in loaded]
        gpu = [i for i, x in enumerate(loaded) if x.device]
        if gpu:
            decoded = gpu_decode(
                [loaded[i].data for i in gpu],
                [loaded[i].route.orientation for i in gpu],
                self.key,
                self.device,
                self.streams,
            )
            refused = [i for i, img in zip(gpu, decoded) if img is None]
            for i, img in zip(gpu, decoded):
                results[i] = img  # a crop, None (the CPU's turn, below) or a too-elongated reason
            self.stats.add(None, len(gpu) - len(refused))
            if refused:
                self.stats.add(REFUSED, len(refused))
            jobs = jobs + self._submit_cpu([loaded[i].data for i in refused])  # the workers, not this thread
            cpu = cpu + refused
        for i, r in zip(cpu, [r for job in jobs for r in job()]):
            results[i] = r
        if gpu:
            self.budget.release(sum(len(loaded[i].data) for i in gpu), parked=True)
        return self._assemble(chunk, results)

    def _assemble(self, chunk: list[Item], results: list) -> Batch:
        """Device crops and CPU-decoded arrays → one [n_ok, 3, crop, crop] tensor in item order; the CPU
        ones are stacked into one pinned buffer and copied to the device once."""
        errors = [r if isinstance(r, str) else "" for r in results]
        assert all(r is not None for r in results), "item left undecoded"
        ok = [i for i, r in enumerate(results) if not isinstance(r, str)]
        images = torch.empty((len(ok), 3, self.crop, self.crop), dtype=torch.uint8, device=self.device)
        on_device = [(slot, results[i]) for slot, i in enumerate(ok) if isinstance(results[i], torch.Tensor)]
        on_host = [(slot, results[i]) for slot, i in enumerate(ok) if isinstance(results[i], np.ndarray)]
        if on_device:
            images[_index([s for s, _ in on_device], self.device)] = torch.stack([t for _, t in on_device])
        if on_host:
            staged = torch.empty(
                (len(on_host), 3, self.crop, self.crop), dtype=torch.uint8, pin_memory=self.pin
            )
            for k, (_, array) in enumerate(on_host):
                staged[k] = torch.from_numpy(array)
            images[_index([s for s, _ in on_host], self.device)] = staged.to(self.device, non_blocking=True)
        return Batch(chunk, images, errors)


def _put(out: queue.Queue, x, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(x, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _ahead(iterable: Iterable[T], depth: int) -> Iterator[T]:
    """Pull up to `depth` elements ahead of the consumer (starting their work early), never more."""
    buffer: deque[T] = deque()
    for x in iterable:
        buffer.append(x)
        if len(buffer) > depth:
            yield buffer.popleft()
    while buffer:
        yield buffer.popleft()
