"""One robust image decoder: any file PIL can read becomes an upright 8-bit RGB image, or a BadImage."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Pillow's own bomb check only warns below 2x its limit; we turn the warning into an error
# at our limit so a 20000x20000 file is refused instead of eating gigabytes of memory.
MAX_PIXELS = 100_000_000
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# The sort command's queues beside the class folders it fills: never classes when that folder is trained on.
SORT_QUEUES = ("_review", "_errors")


def is_class_folder(name: str) -> bool:
    """A visible folder that is not one of the sort command's queues."""
    return not name.startswith(".") and name not in SORT_QUEUES


if TYPE_CHECKING:  # tensor methods only below: `train/split.py --help` must not pay for importing torch
    import torch

ImageFile.LOAD_TRUNCATED_IMAGES = False


class BadImage(Exception):
    """An image file that cannot be decoded; `str()` is the reason, fit for a CSV error column."""


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        return Image.fromarray(np.clip((arr - lo) * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def decode_image(source: str | os.PathLike | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode a path or raw bytes to an upright RGB PIL image; raise BadImage with a reason."""
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise BadImage("empty file (0 bytes)")
            fh = io.BytesIO(source)
        else:
            path = Path(source)
            if path.stat().st_size == 0:
                raise BadImage("empty file (0 bytes)")
            fh = open(path, "rb")  # noqa: SIM115 (closed by the `with fh` below)
        with fh:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fh)
                w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(
                        f"image too large ({w}x{h} pixels > {max_pixels}); decompression-bomb guard"
                    )
                img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except BadImage:
        raise
    except PermissionError as exc:
        raise BadImage(f"permission denied: {exc.filename or source}") from None
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression-bomb guard: {exc}") from None
    except Image.DecompressionBombWarning as exc:
        raise BadImage(f"decompression-bomb guard: {exc}") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image file (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt or truncated image: {exc}") from None


# PIL's ImageOps.exif_transpose as tensor ops on [..., C, H, W], for decoders that ignore EXIF (nvJPEG),
# so a GPU-decoded photo comes out exactly as upright as decode_image's.
EXIF_TRANSPOSE: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    1: lambda x: x,
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.rot90(1, (-2, -1)),
}


def exif_transpose_tensor(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation `orientation` (1..8; anything else = upright) to a CHW tensor."""
    return EXIF_TRANSPOSE.get(orientation, EXIF_TRANSPOSE[1])(image)


def upright_rgb(img: Image.Image) -> Image.Image:
    """An image already opened (e.g. handed to the Python API) made what decode_image returns: EXIF
    orientation applied, then 8-bit RGB."""
    return _to_rgb(ImageOps.exif_transpose(img) or img)
