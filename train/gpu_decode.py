"""Batched image decode on the device: JPEGs through torchvision.io.decode_jpeg (nvJPEG on CUDA), the rest
through core.images.decode_image. A file that cannot be decoded is reported with its reason, never raised.

A cheap header probe (no pixel decode) decides the route: baseline/progressive RGB or gray JPEGs within the
decompression-bomb limit go to decode_jpeg, with EXIF orientation applied on the device afterwards (nvJPEG
ignores it); CMYK/YCCK JPEGs, other formats and anything the batched decoder refuses go to the CPU decoder,
so the pixels match what core.images.decode_image gives the CPU path.
"""
from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from core.images import MAX_PIXELS, BadImage, decode_image, exif_transpose_tensor

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame; not DHT/JPG/DAC
_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field


@dataclass(frozen=True)
class JpegHeader:
    height: int
    width: int
    components: int
    orientation: int = 1  # EXIF orientation tag, 1 = upright


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag (0x0112) from an APP1 payload, 1 when absent or malformed."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    end = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if end is None:
        return 1
    try:
        (ifd,) = struct.unpack(end + "I", tiff[4:8])
        (count,) = struct.unpack(end + "H", tiff[ifd: ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, _typ, _n, value = struct.unpack(end + "HHIH", entry[:10])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def probe_jpeg(data: bytes | memoryview) -> JpegHeader | None:
    """Size, component count and EXIF orientation from a JPEG's headers; None if not a readable JPEG."""
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return None
    pos, orientation = 2, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE or marker == 0xD8:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        payload = data[pos + 4: pos + 2 + length]
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(bytes(payload))
        if marker in _SOF_MARKERS:
            if len(payload) < 6:
                return None
            _bits, h, w, nc = struct.unpack(">BHHB", payload[:6])
            return JpegHeader(h, w, nc, orientation)
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        pos += 2 + length
    return None




def gpu_decodable(header: JpegHeader | None, max_pixels: int = MAX_PIXELS) -> bool:
    return header is not None and header.components in (1, 3) and header.height * header.width <= max_pixels


def _as_tensor(data: bytes | torch.Tensor) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _as_bytes(data: bytes | torch.Tensor) -> bytes:
    return data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)


def _view(data: bytes | torch.Tensor) -> memoryview:
    """Zero-copy view for the header probe."""
    return memoryview(data.numpy()) if isinstance(data, torch.Tensor) else memoryview(data)


def _decode_jpegs(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor] | None:
    """One batched decode_jpeg call; None if the batch fails as a whole (then files go one by one)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision >= 0.29 flags its image IO as deprecated
            return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        return None


def _cpu_decode(data: bytes | torch.Tensor, device: torch.device, max_pixels: int) -> torch.Tensor:
    img = decode_image(_as_bytes(data), max_pixels=max_pixels)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return t.permute(2, 0, 1).contiguous().to(device, non_blocking=True)


def decode_batch(blobs: Sequence[bytes | torch.Tensor], device: torch.device | str,
                 max_pixels: int = MAX_PIXELS) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Encoded files → uint8 RGB [3, H, W] tensors on `device` (None where bad) and {position: reason}."""
    device = torch.device(device)
    out: list[torch.Tensor | None] = [None] * len(blobs)
    headers = [probe_jpeg(_view(b)) if len(b) else None for b in blobs]
    fast = [k for k, h in enumerate(headers) if gpu_decodable(h, max_pixels)]
    decoded = _decode_jpegs([_as_tensor(blobs[k]) for k in fast], device) if fast else []
    if decoded is None:  # one bad file sinks a batched call: retry singly to isolate it
        decoded = [(_decode_jpegs([_as_tensor(blobs[k])], device) or [None])[0] for k in fast]
    for k, img in zip(fast, decoded):
        if img is not None:
            out[k] = exif_transpose_tensor(img, headers[k].orientation)  # type: ignore[union-attr]
    errors: dict[int, str] = {}
    for k in range(len(blobs)):
        if out[k] is None:
            try:
                out[k] = _cpu_decode(blobs[k], device, max_pixels)
            except BadImage as exc:
                errors[k] = str(exc)
    return out, errors


__all__ = ["JpegHeader", "decode_batch", "gpu_decodable", "probe_jpeg"]
