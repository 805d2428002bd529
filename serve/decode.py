"""Bytes → uint8 [3, crop, crop] batches, streaming with bounded look-ahead: JPEGs decoded on the GPU
with nvJPEG when there is one, everything else (and everything on a CPU machine) by core's robust
decoder and the training eval transform in worker processes. A bad file becomes an error string.
"""
from __future__ import annotations

import functools
import io
import itertools
import math
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image

from core.images import EXIF_TRANSPOSE, MAX_PIXELS, BadImage, decode_image, exif_transpose_tensor
from core.preprocess import EvalSpec, eval_transform, interpolation_mode
from serve.discover import Item
from serve.sources import SourceError, read_bytes

T = TypeVar("T")
CropKey = tuple[int, int, str]  # (resize, crop, interpolation): all decoding needs; normalization is on the device
JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
EXIF_ORIENTATION = 0x0112

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


def _init_worker() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes; threads inside them only contend


# ─── GPU path: batched nvJPEG, then the same resize/crop ops on the device ────────────────────

def probe_jpeg(data: bytes) -> int | None:
    """The EXIF orientation when nvJPEG can take these bytes, else None (→ CPU path).

    Header only: CMYK/YCCK, progressive, truncated, non-JPEG and oversized images go to the CPU
    decoder, which handles them robustly (and applies the decompression-bomb guard).
    """
    if not data.startswith(JPEG_MAGIC) or not data.rstrip(b"\x00")[-2:] == JPEG_END:
        return None  # no end-of-image marker: the CPU decoder refuses it; nvJPEG might fill it with grey
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or w * h > MAX_PIXELS:
                return None
            if im.info.get("progressive") or im.info.get("progression"):
                return None
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - anything odd is the CPU decoder's job
        return None
    return orientation if orientation in ORIENT else 1


orient = exif_transpose_tensor


def resize_crop(image: torch.Tensor, key: CropKey) -> torch.Tensor:
    """The eval transform's tensor ops (Resize shorter side, antialias, then CenterCrop) on any device."""
    from torchvision.transforms.v2 import functional as TF

    image = TF.resize(image, [key[0]], interpolation=interpolation_mode(key[2]), antialias=True)
    return TF.center_crop(image, [key[1], key[1]])


def gpu_decode(datas: list[bytes], orientations: list[int], key: CropKey,
               device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG bytes on the GPU in one batch; None for each image nvJPEG refuses."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        decoded: list[torch.Tensor | None] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # the batched call returns nothing when one image fails: retry one by one
        decoded = [_gpu_decode_one(t, device) for t in encoded]
    return [None if img is None else resize_crop(orient(img, o), key) for img, o in zip(decoded, orientations)]


def _gpu_decode_one(encoded: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


# ─── the streaming pipeline ───────────────────────────────────────────────────────────────────

@dataclass
class Batch:
    items: list[Item]
    images: torch.Tensor  # uint8 [n_ok, 3, crop, crop] on the pipeline's device, in item order
    errors: list[str]     # one per item: "" for items in `images`, else the reason


class _Loaded(NamedTuple):
    data: bytes | None
    error: str
    orientation: int | None  # None: CPU path


class DecodePipeline:
    """items → Batch stream. Reads run in a thread pool, CPU decoding in `workers` processes (0: inline),
    GPU decoding in the calling thread. At most `depth` batches are read and `depth` decoded ahead of
    the one being consumed, so memory stays flat however many files the stream holds."""

    def __init__(self, spec: EvalSpec, device: str | torch.device = "cpu", workers: int = 0,
                 threads: int = 8, timeout: float = 10.0, gpu_decode: bool | None = None, depth: int = 2):
        self.key, self.crop = spec_key(spec), spec.crop
        self.device = torch.device(device)
        self.gpu = (self.device.type == "cuda") if gpu_decode is None else gpu_decode
        self.workers, self.timeout, self.depth = workers, timeout, depth
        self.procs = _start_process_pool(workers) if workers > 0 else None  # fork before any thread runs
        self.threads = ThreadPoolExecutor(max(1, threads), thread_name_prefix="imgclf-read")

    def __enter__(self) -> DecodePipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        if self.procs is not None:
            self.procs.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        cpu = f"{self.workers} CPU worker process(es)" if self.workers else "CPU decoding in the main process"
        return ("nvJPEG on " + str(self.device) + " for JPEGs, " if self.gpu else "") + cpu

    def batches(self, items: Iterable[Item], batch_size: int) -> Iterator[Batch]:
        reads = (self._submit_reads(chunk) for chunk in _chunks(items, batch_size))
        decodes = (self._submit_decodes(*r) for r in _ahead(reads, self.depth))
        for pending in _ahead(decodes, self.depth):
            yield self._finish(*pending)

    def _load(self, item: Item) -> _Loaded:
        if item.error:
            return _Loaded(None, item.error, None)
        try:
            data = read_bytes(item, self.timeout)
        except SourceError as exc:
            return _Loaded(None, str(exc), None)
        return _Loaded(data, "", probe_jpeg(data) if self.gpu else None)

    def _submit_reads(self, chunk: list[Item]) -> tuple[list[Item], list[Future]]:
        return chunk, [self.threads.submit(self._load, item) for item in chunk]

    def _submit_decodes(self, chunk: list[Item], futures: list[Future]):
        loaded = [f.result() for f in futures]
        cpu = [i for i, x in enumerate(loaded) if x.data is not None and x.orientation is None]
        return chunk, loaded, cpu, self._submit_cpu([loaded[i].data for i in cpu])

    def _submit_cpu(self, datas: list) -> list[Callable[[], list]]:
        if not datas:
            return []
        if self.procs is None:
            return [functools.partial(cpu_decode_many, datas, self.key)]
        size = max(4, math.ceil(len(datas) / self.workers))
        return [self.procs.submit(cpu_decode_many, datas[i:i + size], self.key).result
                for i in range(0, len(datas), size)]

    def _finish(self, chunk: list[Item], loaded: list[_Loaded], cpu: list[int], jobs: list) -> Batch:
        results: list[torch.Tensor | str] = [x.error for x in loaded]
        gpu = [i for i, x in enumerate(loaded) if x.data is not None and x.orientation is not None]
        if gpu:
            decoded = gpu_decode([loaded[i].data for i in gpu], [loaded[i].orientation for i in gpu],
                                 self.key, self.device)
            refused = [i for i, img in zip(gpu, decoded) if img is None]
            for i, img in zip(gpu, decoded):
                results[i] = img if img is not None else ""
            jobs = jobs + [functools.partial(cpu_decode_many, [loaded[i].data for i in refused], self.key)]
            cpu = cpu + refused
        for i, r in zip(cpu, [r for job in jobs for r in job()]):
            results[i] = torch.from_numpy(r) if isinstance(r, np.ndarray) else r
        return self._assemble(chunk, results)

    def _assemble(self, chunk: list[Item], results: list[torch.Tensor | str]) -> Batch:
        ok = [r.to(self.device, non_blocking=True) for r in results if isinstance(r, torch.Tensor)]
        errors = ["" if isinstance(r, torch.Tensor) else r for r in results]
        assert all(e or isinstance(r, torch.Tensor) for e, r in zip(errors, results)), "item left undecoded"
        images = torch.stack(ok) if ok else torch.empty((0, 3, self.crop, self.crop), dtype=torch.uint8,
                                                         device=self.device)
        return Batch(chunk, images, errors)


def _start_process_pool(workers: int) -> ProcessPoolExecutor:
    # fork (as DataLoader does on Linux) starts in milliseconds; the pool forks all workers on its
    # first task, so run one now, before reader threads exist whose locks a child could inherit.
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
    pool.submit(int).result()
    return pool


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
