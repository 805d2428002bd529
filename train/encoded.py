"""The host side of the GPU training feed: file bytes read by DataLoader workers (thread-pool reads),
routed by core.jpeg, and packed per batch into one buffer that crosses to the main process cheaply.
What nvJPEG does not take is decoded by PIL right here, in the workers; train.gpu_data does the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.images import BadImage
from core.jpeg import NO_DEVICE_DECODER, JpegRoute, decode_cpu, route_jpeg


@dataclass
class EncodedSample:
    """One file as a worker hands it over: the bytes of a JPEG for the device decoder, or, for anything
    core.jpeg routes to the CPU, the image the worker already decoded (uint8 [3, H, W])."""

    data: torch.Tensor  # uint8: file bytes [nbytes], or a decoded image [3, H, W]; empty when unreadable
    label: int
    index: int
    epoch: int = 0
    error: str | None = None
    orientation: int = 1  # EXIF orientation of a JPEG for the device (nvJPEG ignores it)
    cpu_reason: str | None = None  # why core.jpeg sent the file to the CPU decoder
    upright: tuple[int, int] = (0, 0)  # (H, W) of a JPEG for the device, from its header, EXIF applied


@dataclass
class EncodedBatch:
    """What the DataLoader yields: every sample's bytes (or CPU-decoded pixels) packed into ONE uint8 buffer,
    so a batch crosses the worker → main process boundary as a handful of shared-memory storages instead of
    one per file (each costs an fd over a socket on unpickle). No `.to()` on purpose: Accelerate's device
    placement leaves it alone; `blob(k)` are zero-copy views into the buffer.
    """

    buffer: torch.Tensor  # uint8 [total bytes]
    offsets: torch.Tensor  # int64 [N + 1]: sample k is buffer[offsets[k]:offsets[k + 1]]
    shapes: (
        torch.Tensor
    )  # int64 [N, 3]: (3, H, W) of a CPU-decoded image, zeros for JPEG bytes for the device
    # int64 [N, 2]: upright (H, W) of JPEG bytes for the device from their header (zeros otherwise), so a
    # resize bound can refuse a file before it is decoded
    header_hw: torch.Tensor
    orientations: torch.Tensor  # int64 [N]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], dataset positions: with `epochs`, the key of each image's augmentation
    epochs: torch.Tensor  # int64 [N]
    read_errors: dict[int, str] = field(default_factory=dict)  # position in batch → reason
    cpu_reasons: dict[int, str] = field(default_factory=dict)  # position → why it was decoded on the CPU

    def __len__(self) -> int:
        return len(self.labels)

    def blob(self, k: int) -> torch.Tensor:
        return self.buffer[int(self.offsets[k]) : int(self.offsets[k + 1])]

    @property
    def data(self) -> list[torch.Tensor]:
        return [self.blob(k) for k in range(len(self))]


def _read(path: str) -> tuple[torch.Tensor, str | None]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return torch.empty(0, dtype=torch.uint8), f"cannot read file: {exc.strerror or exc}"
    if not raw:
        return torch.empty(0, dtype=torch.uint8), "empty file (0 bytes)"
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8), None


class EncodedImages(torch.utils.data.Dataset):
    """(path, label) samples → EncodedSample. `__getitems__` handles a whole batch with a thread pool.

    Keys are an index or an (epoch, index) pair, so train.data's EpochSampler can drive it unchanged.
    Each file goes through core.jpeg's router here, in the worker: JPEGs for the device decoder stay bytes,
    everything else (progressive, CMYK, PNG, huge, truncated...) is decoded by PIL right here, in parallel
    worker processes, instead of serially in the device feed's thread. `cpu_decode=False` only reads.

    Reading is I/O and PIL decode releases the GIL, so threads overlap well; the pool is made lazily per
    process so DataLoader worker processes each get their own.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        threads: int = 8,
        cpu_decode: bool = True,
        device_decode: bool = True,
    ):
        self.samples = [(os.fspath(p), int(y)) for p, y in samples]
        self.threads, self.cpu_decode = threads, cpu_decode
        self.device_decode = device_decode  # False: no working device decoder, PIL decodes every file here
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> EncodedSample:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        path, label = self.samples[i]
        data, error = _read(path)
        if error or not self.cpu_decode:
            return EncodedSample(data, label, i, epoch, error)
        route = route_jpeg(data) if self.device_decode else JpegRoute(NO_DEVICE_DECODER)
        if route.device:
            return EncodedSample(data, label, i, epoch, orientation=route.orientation, upright=route.upright)
        try:
            return EncodedSample(decode_cpu(data), label, i, epoch, cpu_reason=route.reason)
        except BadImage as exc:
            return EncodedSample(
                torch.empty(0, dtype=torch.uint8), label, i, epoch, str(exc), cpu_reason=route.reason
            )

    def __getitems__(self, indices: list) -> list[EncodedSample]:
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = (
                ThreadPoolExecutor(self.threads, thread_name_prefix="imgclf-read"),
                os.getpid(),
            )
        return list(self._pool.map(self.__getitem__, indices))

    def __getstate__(self) -> dict:  # a pool cannot cross into worker processes
        return {**self.__dict__, "_pool": None, "_pid": -1}


def collate_encoded(samples: list[EncodedSample]) -> EncodedBatch:
    sizes = torch.tensor([s.data.numel() for s in samples], dtype=torch.int64)
    offsets = torch.zeros(len(samples) + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=offsets[1:])
    decoded = [s.data.dim() == 3 for s in samples]
    return EncodedBatch(
        buffer=torch.cat([s.data.reshape(-1) for s in samples])
        if samples
        else torch.empty(0, dtype=torch.uint8),
        offsets=offsets,
        shapes=torch.tensor(
            [list(s.data.shape) if d else [0, 0, 0] for s, d in zip(samples, decoded)], dtype=torch.int64
        ).reshape(-1, 3),
        header_hw=torch.tensor([s.upright for s in samples], dtype=torch.int64).reshape(-1, 2),
        orientations=torch.tensor([s.orientation for s in samples], dtype=torch.int64),
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64),
        indices=torch.tensor([s.index for s in samples], dtype=torch.int64),
        epochs=torch.tensor([s.epoch for s in samples], dtype=torch.int64),
        read_errors={k: s.error for k, s in enumerate(samples) if s.error},
        cpu_reasons={k: s.cpu_reason for k, s in enumerate(samples) if s.cpu_reason},
    )


__all__ = ["EncodedBatch", "EncodedImages", "EncodedSample", "collate_encoded"]
