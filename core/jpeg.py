"""The one JPEG router and device decoder, for training and serving: a header probe decides which files
nvJPEG gets, `decode_on_device` decodes those in bisected chunks under a stream protocol that is safe
whatever the library does inside, and `DecodeStats` counts what went to the CPU and why.
"""

from __future__ import annotations

import struct
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.images import BadImage, TooElongated, check_resize_output, decode_image, exif_transpose_tensor
from core.streams import CUDA_STREAMS, CudaStreams, normal_device, refuse_alias

# nvJPEG's decode of a 24 MP photo is 72 MB; 256 of them next to a model risk OOM. Larger files go to the
# CPU decoder in worker processes (PIL), which is what a rare huge photo costs anyway.
DEVICE_MAX_PIXELS = 16_000_000
CHUNK = 64  # images per batched decode_jpeg call: bounds its memory and the cost of a bisection

# Why a file went to the CPU decoder (the keys of DecodeStats.cpu).
NOT_JPEG = "not a JPEG"
PROGRESSIVE = "progressive JPEG"
NOT_BASELINE = "lossless/arithmetic/hierarchical JPEG"
NOT_8BIT = "12/16-bit JPEG"
COLOR = "CMYK/YCCK/RGB-coded JPEG"
TRUNCATED = "no end-of-image marker"
TOO_LARGE = f"over {DEVICE_MAX_PIXELS // 1_000_000} MP"
REFUSED = "refused by the device decoder"
NO_DEVICE_DECODER = "no device decoder"

_BASELINE = {
    0xC0,
    0xC1,
}  # SOF0 baseline, SOF1 extended sequential: both Huffman-coded, what nvJPEG's HW path takes
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_OTHER_SOF = {0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF}  # lossless, hierarchical, arithmetic
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}  # RSTn, SOI, TEM: no length field
_SOF = frozenset(_BASELINE | _PROGRESSIVE | _OTHER_SOF)
_WANTED = _SOF | {0xE1, 0xEE}  # frame header, EXIF, Adobe
_RGB_IDS = (ord("R"), ord("G"), ord("B"))  # component ids libjpeg reads as RGB (not YCbCr)


@dataclass(frozen=True)
class JpegRoute:
    """The probe's verdict: `reason` None means nvJPEG; otherwise why the CPU decoder gets the file."""

    reason: str | None
    orientation: int = 1  # EXIF orientation (1..8); nvJPEG ignores it, so it is applied after decode
    height: int = 0
    width: int = 0

    @property
    def device(self) -> bool:
        return self.reason is None

    @property
    def upright(self) -> tuple[int, int]:
        """(height, width) from the frame header once its EXIF orientation is applied."""
        return upright_size(self.height, self.width, self.orientation)


def upright_size(height: int, width: int, orientation: int) -> tuple[int, int]:
    """(height, width) of a stored image once EXIF `orientation` is applied: 5..8 swap the axes."""
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def resize_refusal(height: int, width: int, resize: int, crop: int, orientation: int = 1) -> str | None:
    """The reason core.images.check_resize_output gives a height x width image stored with EXIF
    `orientation` (the same words as a CPU decode's row or note), or None when its resize is in bounds
    or the size is unknown (0: a header that defers it; the decoded shape is asked again). Device paths
    ask this of header sizes before decoding and of decoded shapes before resizing."""
    if height <= 0 or width <= 0:
        return None
    height, width = upright_size(height, width, orientation)
    try:
        check_resize_output(width, height, resize, crop)
    except TooElongated as exc:
        return str(exc)
    return None


def exif_orientation(app1: bytes) -> int:
    """Orientation tag (0x0112) of an APP1 payload's first IFD; 1 when absent or malformed."""
    if not app1.startswith(b"Exif\0\0") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    end = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if end is None:
        return 1
    try:
        (ifd,) = struct.unpack(end + "I", tiff[4:8])
        (count,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            tag, _typ, _n, value = struct.unpack(end + "HHIH", tiff[ifd + 2 + 12 * k : ifd + 12 + 12 * k])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _has_eoi(data: bytes | memoryview) -> bool:
    """An end-of-image marker near the end (a few writers pad after it); nvJPEG grey-fills truncated files."""
    return b"\xff\xd9" in bytes(data[-32:])


def _frame_reason(sof: int, payload: bytes, adobe_transform: int | None) -> tuple[str | None, int, int]:
    """(CPU reason or None, height, width) from a start-of-frame segment."""
    if sof in _PROGRESSIVE:
        reason: str | None = PROGRESSIVE
    elif sof not in _BASELINE:
        reason = NOT_BASELINE
    else:
        reason = None
    if len(payload) < 6:
        return NOT_JPEG, 0, 0
    bits, h, w, nc = struct.unpack(">BHHB", payload[:6])
    ids = tuple(payload[6 + 3 * k] for k in range(nc) if 6 + 3 * k < len(payload))
    rgb_coded = nc == 3 and (adobe_transform == 0 or ids == _RGB_IDS)
    if reason is None and bits != 8:
        reason = NOT_8BIT
    if reason is None and (nc not in (1, 3) or rgb_coded):
        reason = COLOR
    if reason is None and h * w > DEVICE_MAX_PIXELS:
        reason = TOO_LARGE
    return reason, h, w


def route_jpeg(data: bytes | memoryview | torch.Tensor) -> JpegRoute:
    """Walk the JPEG markers up to the first scan (pure Python, no pixel decode, a few µs per file)."""
    if isinstance(data, torch.Tensor):
        data = memoryview(data.numpy())
    if len(data) < 4 or bytes(data[:3]) != b"\xff\xd8\xff":
        return JpegRoute(NOT_JPEG)
    pos, orientation, adobe, frame = 2, 1, None, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return JpegRoute(NOT_JPEG, orientation)
        marker = data[pos + 1]
        if marker == 0xFF or marker in _STANDALONE:  # fill byte, or a marker without a length
            pos += 1 if marker == 0xFF else 2
            continue
        if marker == 0xD9:  # end of image before any scan
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _WANTED:  # only these payloads are copied: the walk stays a few µs per file
            payload = bytes(data[pos + 4 : pos + 2 + length])
            if marker == 0xE1 and orientation == 1:
                orientation = exif_orientation(payload)
            elif marker == 0xEE and payload.startswith(b"Adobe") and len(payload) >= 12:
                adobe = payload[11]  # transform flag: 0 = RGB/CMYK as stored, 1 = YCbCr, 2 = YCCK
            elif marker in _SOF:
                frame = (marker, payload)
        elif marker == 0xDA:  # start of scan: every header we need came before it
            break
        pos += 2 + length
    if frame is None:
        return JpegRoute(NOT_JPEG, orientation)
    reason, h, w = _frame_reason(frame[0], frame[1], adobe)
    if reason is None and not _has_eoi(data):
        reason = TRUNCATED
    return JpegRoute(reason, orientation, h, w)


# ------------------------------------------------------------------------------ counting fallbacks


class DecodeStats:
    """How many images each decoder took, and why the CPU got its share. Thread-safe; merge() adds another's."""

    def __init__(self) -> None:
        self.device = 0
        self.cpu: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._reported = False

    def add(self, reason: str | None, n: int = 1) -> None:
        with self._lock:
            if reason is None:
                self.device += n
            else:
                self.cpu[reason] += n

    def merge(self, other: DecodeStats) -> None:
        with self._lock:
            self.device += other.device
            self.cpu.update(other.cpu)

    @property
    def cpu_total(self) -> int:
        return sum(self.cpu.values())

    def summary(self) -> str:
        why = ", ".join(f"{reason}: {n}" for reason, n in self.cpu.most_common())
        return f"image decode: {self.device} on the device, {self.cpu_total} on the CPU" + (
            f" ({why})" if why else ""
        )

    def report_once(self, log: Callable[[str], None]) -> None:
        """Log the summary once per run, when anything went to the CPU (a silent CPU decode is a defect)."""
        if self._reported or not self.cpu_total:
            return
        self._reported = True
        log(self.summary())


# ------------------------------------------------------------------------------ decoding


Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def torchvision_decoder(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """One batched torchvision decode_jpeg call (nvJPEG on CUDA, libjpeg-turbo on CPU); raises on a bad file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 flags its image IO as deprecated
        return decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)


def bisect_decode(
    blobs: list[torch.Tensor], decode: Callable[[list[torch.Tensor]], list[torch.Tensor]]
) -> list[torch.Tensor | None]:
    """Decode in one call; when it fails, split in halves and recurse, so k bad files in n cost about
    2·k·log2(n) calls instead of n. None marks a file that fails on its own."""
    if not blobs:
        return []
    try:
        return list(decode(blobs))
    except (RuntimeError, ValueError):
        if len(blobs) == 1:
            return [None]
    half = len(blobs) // 2
    return bisect_decode(blobs[:half], decode) + bisect_decode(blobs[half:], decode)


_available: dict[torch.device, bool] = {}


def device_decoder_available(device: torch.device | str, decoder: Decoder | None = None) -> bool:
    """Whether the device decoder works here (once per device): torchvision built without nvJPEG, or a MIG
    slice without a JPEG engine, fails every call, and bisecting every batch down to single files to learn
    that would be slow. Callers then send every file to the CPU decoder, counted as NO_DEVICE_DECODER.
    The device is normalised exactly as decode_on_device does (core.streams.normal_device)."""
    device = normal_device(device)
    if device not in _available:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (90, 160, 30)).save(buf, "JPEG")
        probe = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        try:
            (decoder or torchvision_decoder)([probe], device)
            _available[device] = True
        except (RuntimeError, ValueError):
            _available[device] = False
    return _available[device]


def decode_on_device(
    blobs: Sequence[torch.Tensor],
    device: torch.device | str,
    *,
    chunk: int = CHUNK,
    decoder: Decoder = torchvision_decoder,
    streams: CudaStreams = CUDA_STREAMS,
) -> list[torch.Tensor | None]:
    """1-D uint8 CPU tensors of routed JPEGs → uint8 RGB [3, H, W] on `device` (None where refused, for the CPU).

    Usable on the caller's current stream as soon as this returns. On CUDA:
    (1) the library allocates on our dedicated decode stream (core.streams: outside PyTorch's stream pool,
        so no other stream is ever the same one), where nothing else runs, so no block freed by the
        caller's still-queued kernels can be handed to its writes (pytorch/vision#9606);
    (2) the caller's stream waits for the decode stream, and (3) each output is record_stream'ed on the
        caller's stream, so its memory is not reused by a later decode until the caller's work on it is done.
    Raises RuntimeError when the caller's current stream IS the decode stream (the protocol needs two).
    """
    device = normal_device(device)
    out: list[torch.Tensor | None] = []
    for start in range(0, len(blobs), chunk):
        part = list(blobs[start : start + chunk])
        out += (
            _decode_cuda(part, device, decoder, streams)
            if device.type == "cuda"
            else bisect_decode(part, lambda b: decoder(b, device))
        )
    return out


def _decode_cuda(
    blobs: list[torch.Tensor], device: torch.device, decoder: Decoder, streams: CudaStreams
) -> list[torch.Tensor | None]:
    consumer = streams.current(device)
    stream = streams.decode(device)
    refuse_alias(consumer, stream)
    with streams.use(stream):
        images = bisect_decode(blobs, lambda b: decoder(b, device))
    streams.hand_over(streams.record(stream), consumer, [img for img in images if img is not None])
    return images


def decode_files(
    blobs: Sequence[torch.Tensor],
    device: torch.device | str,
    stats: DecodeStats | None = None,
    max_pixels: int | None = None,
) -> tuple[list[torch.Tensor | None], dict[int, str]]:
    """Route, decode on `device` what nvJPEG takes (EXIF applied), the rest on the CPU in this thread.

    → (uint8 [3, H, W] on `device` or None, {position: reason} for files no decoder could read). Hot paths
    decode the CPU share in worker processes first and hand only routed JPEGs to decode_on_device.
    """
    device = torch.device(device)
    routes = [route_jpeg(b) for b in blobs]
    fast = [
        k
        for k, r in enumerate(routes)
        if r.device and (max_pixels is None or r.height * r.width <= max_pixels)
    ]
    out: list[torch.Tensor | None] = [None] * len(blobs)
    why: dict[int, str] = {k: r.reason for k, r in enumerate(routes) if r.reason is not None}
    for k, img in zip(fast, decode_on_device([blobs[k] for k in fast], device)):
        if img is None:
            why[k] = REFUSED
        else:
            out[k] = exif_transpose_tensor(img, routes[k].orientation)
    stats = stats if stats is not None else DecodeStats()
    errors: dict[int, str] = {}
    for k in range(len(blobs)):
        stats.add(why.get(k))
        if out[k] is None:
            try:
                out[k] = decode_cpu(blobs[k], max_pixels).to(device, non_blocking=True)
            except BadImage as exc:
                errors[k] = str(exc)
    return out, errors


def decode_cpu(data: bytes | memoryview | torch.Tensor, max_pixels: int | None = None) -> torch.Tensor:
    """Any image file → upright uint8 RGB [3, H, W] on the CPU through core.images (raises BadImage)."""
    raw = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
    img = decode_image(raw) if max_pixels is None else decode_image(raw, max_pixels=max_pixels)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return t.permute(2, 0, 1).contiguous()


__all__ = [
    "CHUNK",
    "DEVICE_MAX_PIXELS",
    "BadImage",
    "DecodeStats",
    "JpegRoute",
    "bisect_decode",
    "decode_cpu",
    "decode_files",
    "decode_on_device",
    "device_decoder_available",
    "exif_orientation",
    "resize_refusal",
    "route_jpeg",
    "torchvision_decoder",
    "upright_size",
]
