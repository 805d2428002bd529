"""Batched train augmentation and eval preprocessing on the device, for uint8 images of different sizes.

Same semantics as core.preprocess.train_transform / eval_transform (rotation → random resized crop →
flip → color jitter → center crop; resize shorter side → center crop), but one batch at a time on the
GPU. Random parameters come from a counter-based hash of (seed, epoch, index), so an image gets the
same augmentation whatever batch, rank or worker it lands in.

How different image sizes are handled: every image gets its own crop box and rotation, so the whole
output pixel → source pixel map is one affine transform per image. Each image's source region (the
bounding box of its crop, rotated) is cut out and, where the crop is larger than the output, shrunk
with an antialiased resize to about the output scale; the results go into one zero-padded canvas
batch, and a single affine_grid + grid_sample per batch does crop, resize, flip and rotation at once.
Without rotation the shrink lands exactly on the output grid, so the result equals the CPU path's
antialiased resize; with rotation the antialias filter runs before the rotation instead of after it
(a difference of filter orientation only). All of this holds for the same decoded pixels: on CUDA the
decode itself differs from PIL's on 4:2:0 JPEGs (nvJPEG's nearest-neighbour chroma upsampling, mean
≈5 uint8 levels predicted; measured by tools/gpu_check.py), so GPU-vs-CPU batches are NOT within 1 level.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.preprocess import AugmentSpec, EvalSpec
from core.resize import Plan, eval_resize_crop, resize_crop_many, to_uint8

# ------------------------------------------------------------------------------ counter-based random numbers

_MASK32 = 0xFFFFFFFF
# Uniform draws per image, by purpose; RRC needs 10 tries of (scale, ratio) like torchvision.
_TRIES = 10
_SCALE, _RATIO = slice(0, 10), slice(10, 20)
_CROP_I, _CROP_J, _FLIP, _ANGLE = 20, 21, 22, 23
_JITTER = slice(24, 27)  # brightness, contrast, saturation factors
_ORDER = slice(27, 30)  # sort keys giving each image its own random order of the jitter ops
DRAWS_PER_IMAGE = 30


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32 in int64, split in 16-bit halves so nothing overflows."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash (C. Wellons): a well-mixed 32-bit bijection."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(
    seed: int, epoch: int | torch.Tensor, indices: torch.Tensor, n: int = DRAWS_PER_IMAGE
) -> torch.Tensor:
    """[N, n] float64 uniforms in [0, 1), a pure function of (seed, epoch, index, draw number).

    `epoch` is one number or one per image (a batch may straddle epochs when keys come from a sampler).
    """
    idx = indices.to(torch.int64).cpu().reshape(-1, 1) & _MASK32
    ep = torch.as_tensor(epoch, dtype=torch.int64).cpu().reshape(-1, 1) & _MASK32
    h = _mix32(torch.tensor((seed & _MASK32) ^ 0x9E3779B9, dtype=torch.int64))
    h = _mix32((h + ep) & _MASK32)
    h = _mix32((h + idx) & _MASK32)
    h = _mix32((h + torch.arange(n, dtype=torch.int64)) & _MASK32)
    return h.to(torch.float64) / 2.0**32


# ------------------------------------------------------------------------------ parameters


def resized_crop_params(
    u: torch.Tensor, height: torch.Tensor, width: torch.Tensor, scale: Sequence[float], ratio: Sequence[float]
) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params for N images at once → int64 [N, 4] (top, left, h, w).

    Same algorithm: up to 10 tries of (area scale, log-uniform aspect ratio), the first try that fits
    wins, else the central-crop fallback clamped to the ratio range.
    """
    H, W = height.to(torch.float64)[:, None], width.to(torch.float64)[:, None]
    area = H * W
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, _SCALE])
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * u[:, _RATIO])
    w = torch.round(torch.sqrt(target * aspect))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    H, W = H[:, 0], W[:, 0]
    top = torch.floor(u[:, _CROP_I] * (H - h + 1))
    left = torch.floor(u[:, _CROP_J] * (W - w + 1))

    # Fallback: central crop with the aspect ratio clamped into range.
    in_ratio = W / H
    fb_w = torch.where(in_ratio > max(ratio), torch.round(H * max(ratio)), W)
    fb_h = torch.where(in_ratio < min(ratio), torch.round(W / min(ratio)), H)
    fb_top, fb_left = (
        torch.div(H - fb_h, 2, rounding_mode="floor"),
        torch.div(W - fb_w, 2, rounding_mode="floor"),
    )
    ok = fits.any(dim=1)
    params = torch.stack(
        [
            torch.where(ok, top, fb_top),
            torch.where(ok, left, fb_left),
            torch.where(ok, h, fb_h),
            torch.where(ok, w, fb_w),
        ],
        dim=1,
    )
    return params.to(torch.int64)


def _center_offset(full: int, crop: int) -> int:
    """torchvision center_crop's offset: int(round((full - crop) / 2.0))."""
    return round((full - crop) / 2.0)


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    """[N, 2, 3] affine → [N, 3, 3]."""
    last = torch.tensor([0.0, 0.0, 1.0], dtype=m.dtype).expand(m.shape[0], 1, 3)
    return torch.cat([m, last], dim=1)


@dataclass
class TrainGeometry:
    """Per-image maps in continuous pixel coordinates (pixel centres at k + 0.5).

    crop: RRC-output pixel → rotated-image pixel (scale into the crop box, mirrored when flipped).
    rotate: rotated-image pixel → source pixel (torchvision RandomRotation: counter-clockwise for
    positive angles about the image centre, expand=False, so the rotated image keeps the source size).
    box: the crop box (top, left, h, w) in the rotated image.
    """

    crop: torch.Tensor  # [N, 2, 3] float64
    rotate: torch.Tensor  # [N, 2, 3] float64
    box: torch.Tensor  # [N, 4] int64
    flip: torch.Tensor  # [N] bool
    angle: torch.Tensor  # [N] degrees

    def source(self) -> torch.Tensor:
        """RRC-output pixel → source pixel, [N, 2, 3]."""
        return (_homogeneous(self.rotate) @ _homogeneous(self.crop))[:, :2]


def train_geometry(
    u: torch.Tensor, height: torch.Tensor, width: torch.Tensor, aug: AugmentSpec, size: int
) -> TrainGeometry:
    """The random crop box, flip and rotation of each image as affine maps (all on the host, float64)."""
    n = u.shape[0]
    box = resized_crop_params(u, height, width, aug.scale, aug.ratio)
    top, left, h, w = box.to(torch.float64).unbind(1)
    flip = u[:, _FLIP] < aug.hflip
    angle = -aug.rotation + 2 * aug.rotation * u[:, _ANGLE]
    sx, sy = w / size, h / size
    crop = torch.zeros(n, 2, 3, dtype=torch.float64)
    crop[:, 0, 0] = torch.where(flip, -sx, sx)  # x_rot = left + sx * (flip ? size - x : x)
    crop[:, 0, 2] = torch.where(flip, left + w, left)
    crop[:, 1, 1], crop[:, 1, 2] = sy, top
    rad = torch.deg2rad(angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = width.to(torch.float64) / 2, height.to(torch.float64) / 2
    rotate = torch.zeros(n, 2, 3, dtype=torch.float64)
    rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 0, 2] = cos, -sin, cx - cos * cx + sin * cy
    rotate[:, 1, 0], rotate[:, 1, 1], rotate[:, 1, 2] = sin, cos, cy - sin * cx - cos * cy
    return TrainGeometry(crop, rotate, box, flip, angle)


def _source_boxes(
    maps: torch.Tensor, size: int, height: torch.Tensor, width: torch.Tensor, margin: int
) -> torch.Tensor:
    """Integer [N, 4] (x0, y0, x1, y1): bounding box of each map's size×size output in the source, clipped."""
    corners = torch.tensor([[0.0, 0.0], [size, 0.0], [0.0, size], [size, size]], dtype=torch.float64)
    src = torch.einsum("nij,kj->nki", maps[:, :, :2], corners) + maps[:, None, :, 2]  # [N, 4, 2]
    lo = torch.floor(src.amin(dim=1) + 1e-6) - margin
    hi = torch.ceil(src.amax(dim=1) - 1e-6) + margin
    lim = torch.stack([width, height], dim=1).to(torch.float64)
    lo = torch.minimum(lo.clamp(min=0), lim - 1)
    hi = torch.maximum(torch.minimum(hi, lim), lo + 1)
    return torch.cat([lo, hi], dim=1).to(torch.int64)


# ------------------------------------------------------------------------------ uploads


class Uploads:
    """Every host → device copy the feed makes, through one door, counted (tests assert the counts).

    On CUDA each is a pinned buffer and one non_blocking copy, so none blocks the host: copying from
    pageable memory (what `.to(device)` or `torch.tensor(..., device=...)` of host data does) waits for
    the stream, 4-6 times per batch in the old feed. `copies` counts uploads; a per-batch figure of 1-2
    (parameters, labels) is the design.
    """

    def __init__(self) -> None:
        self.copies = 0
        self._lock = threading.Lock()  # the decode and augment stages both upload

    def put(self, host: torch.Tensor, device: torch.device) -> torch.Tensor:
        with self._lock:
            self.copies += 1
        if torch.device(device).type != "cuda":
            return host.to(device)
        return host.pin_memory().to(device, non_blocking=True)  # the host allocator guards the buffer


# ------------------------------------------------------------------------------ sampling


def _shrunk_sizes(boxes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, 2] (h, w): each source box shrunk by its per-axis scale (<= 1), in whole pixels."""
    bw = (boxes[:, 2] - boxes[:, 0]).to(torch.float64)
    bh = (boxes[:, 3] - boxes[:, 1]).to(torch.float64)
    # Python's round() (half to even) as before: torch.round is half to even too
    return torch.stack([torch.round(bh * scale[:, 1]), torch.round(bw * scale[:, 0])], 1).clamp(min=1).long()


def _sampling_grid(
    geo: TrainGeometry,
    boxes: torch.Tensor,
    actual: torch.Tensor,
    canvas_hw: tuple[int, int],
    size: int,
    crop: int,
) -> torch.Tensor:
    """[N, 16] float64 on the host: the two affine steps of the grid (step1, step2: 6 each) and the clamp
    box (lo, hi: 2 each) between them; `_grid` turns them into the grid_sample grid on the device.

    Step 1 maps output pixels into the rotated image and clamps them to the crop box's pixel centres
    (crop-then-resize replicates the box edge, it never reads outside the box); step 2 rotates into
    the source and lands on the canvas in grid_sample's normalized coordinates.
    """
    n = geo.crop.shape[0]
    off = _center_offset(size, crop)
    # affine_grid's normalized output (align_corners=False) → RRC-output pixels p = off + (x_n + 1) * crop / 2
    den = torch.tensor(
        [[crop / 2, 0, off + crop / 2], [0, crop / 2, off + crop / 2], [0, 0, 1]], dtype=torch.float64
    )
    step1 = (_homogeneous(geo.crop) @ den)[:, :2]
    ch, cw = canvas_hw
    to_canvas = torch.zeros(n, 3, 3, dtype=torch.float64)  # g = 2 * (x - x0) * k / CW - 1
    to_canvas[:, 0, 0] = 2 * actual[:, 0] / cw
    to_canvas[:, 0, 2] = -2 * boxes[:, 0] * actual[:, 0] / cw - 1
    to_canvas[:, 1, 1] = 2 * actual[:, 1] / ch
    to_canvas[:, 1, 2] = -2 * boxes[:, 1] * actual[:, 1] / ch - 1
    to_canvas[:, 2, 2] = 1
    step2 = (to_canvas @ _homogeneous(geo.rotate))[:, :2]
    top, left, h, w = geo.box.to(torch.float64).unbind(1)
    lo = torch.stack([left + 0.5, top + 0.5], dim=1)
    hi = torch.stack([left + w - 0.5, top + h - 0.5], dim=1)
    return torch.cat([step1.reshape(n, 6), step2.reshape(n, 6), lo, hi], 1)


def _grid(p: torch.Tensor, crop: int) -> torch.Tensor:
    """Device params [N, 16] (float32) → grid_sample grid [N, crop, crop, 2]."""
    n = p.shape[0]
    step1, step2 = p[:, :6].reshape(n, 2, 3), p[:, 6:12].reshape(n, 2, 3)
    lo, hi = p[:, 12:14].view(n, 1, 1, 2), p[:, 14:16].view(n, 1, 1, 2)
    rot = F.affine_grid(step1, [n, 1, crop, crop], align_corners=False)  # rotated-image pixels
    rot = torch.maximum(torch.minimum(rot, hi), lo)
    return torch.einsum("nij,nhwj->nhwi", step2[:, :, :2], rot) + step2[:, None, None, :, 2]


def _inside(hw: torch.Tensor, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """[N, 1, CH, CW] float: 1 inside each image's part of the canvas. torchvision's rotate samples such a
    mask alongside the image and multiplies by it (darkening the border band); we do the same."""
    ch, cw = canvas_hw
    rows = torch.arange(ch, device=hw.device).view(1, ch, 1) < hw[:, 0].view(-1, 1, 1)
    cols = torch.arange(cw, device=hw.device).view(1, 1, cw) < hw[:, 1].view(-1, 1, 1)
    return (rows & cols).unsqueeze(1).float()


# Columns of the one per-batch parameter buffer (float64 on the host, float32 on the device).
_GRID, _RESIZE, _HW, _FACTORS, _ORDER_COLS = (
    slice(0, 16),
    slice(16, 26),
    slice(26, 28),
    slice(28, 31),
    slice(31, 34),
)
_PARAMS = 34


def train_batch(
    images: Sequence[torch.Tensor],
    indices: torch.Tensor,
    seed: int,
    epoch: int | torch.Tensor,
    aug: AugmentSpec,
    spec: EvalSpec,
    uploads: Uploads | None = None,
) -> torch.Tensor:
    """uint8 [3, H_i, W_i] images (any sizes, one device) → augmented uint8 [N, 3, crop, crop].

    Every random parameter is computed on the host and goes to the device in ONE pinned buffer with one
    non_blocking copy (`uploads`); the shrink of all the source boxes is ONE batched call (core.resize).
    """
    if not aug.enabled:
        return eval_batch(images, spec)
    uploads = uploads if uploads is not None else Uploads()
    device = images[0].device
    size = aug.size or spec.crop
    height = torch.tensor([int(im.shape[-2]) for im in images])
    width = torch.tensor([int(im.shape[-1]) for im in images])
    u = uniforms(seed, epoch, indices)
    geo = train_geometry(u, height, width, aug, size)
    src = geo.source()
    boxes = _source_boxes(src, size, height, width, margin=2 if aug.rotation else 0)
    # Shrink each source box so one output pixel covers at most one canvas pixel (the antialias step).
    span = src[:, :, :2].norm(dim=1)  # source pixels per output pixel along the output's x and y
    hw = _shrunk_sizes(boxes, (1 / span).clamp(max=1.0))
    canvas_hw = (int(hw[:, 0].max()), int(hw[:, 1].max()))
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    actual = torch.stack([hw[:, 1] / box_w, hw[:, 0] / box_h], 1).to(torch.float64)
    plan = Plan(boxes, hw, torch.cat([torch.zeros_like(hw), hw], 1))
    params = torch.zeros(len(images), _PARAMS, dtype=torch.float64)
    params[:, _GRID] = _sampling_grid(geo, boxes, actual, canvas_hw, size, spec.crop)
    params[:, _RESIZE] = plan.params()
    params[:, _HW] = hw.to(torch.float64)
    params[:, _FACTORS] = _jitter_factors(u, aug.color_jitter)
    params[:, _ORDER_COLS] = u[:, _ORDER].argsort(dim=1).to(torch.float64)
    p = uploads.put(params, device)  # the only host → device copy of this batch's augmentation
    canvas = resize_crop_many(images, plan, canvas_hw, spec.interpolation, params=p[:, _RESIZE])
    grid = _grid(p[:, _GRID].float(), spec.crop)
    out = F.grid_sample(canvas, grid, mode=spec.interpolation, padding_mode="zeros", align_corners=False)
    if aug.rotation:
        inside = _inside(p[:, _HW].round().long(), canvas_hw)
        out = out * F.grid_sample(
            inside, grid, mode=spec.interpolation, padding_mode="zeros", align_corners=False
        )
    out = to_uint8(out)
    if aug.color_jitter:
        out = color_jitter(out, p[:, _FACTORS].float(), p[:, _ORDER_COLS].long())
    return out


# ------------------------------------------------------------------------------ color jitter


def _gray(x: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 grayscale: 0.2989 R + 0.587 G + 0.114 B, floored."""
    return (x[:, 0:1] * 0.2989 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114).floor_()


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f + other * (1 - f)).clamp_(0, 255).floor_()  # uint8 cast truncates in torchvision


_JITTER_OPS = {
    0: lambda x, f: (x * f).clamp_(0, 255).floor_(),
    1: lambda x, f: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f),
    2: lambda x, f: _blend(x, _gray(x), f),
}


def _jitter_factors(u: torch.Tensor, strength: float) -> torch.Tensor:
    """[N, 3] brightness, contrast, saturation factors on the host."""
    lo, hi = max(0.0, 1 - strength), 1 + strength
    return lo + (hi - lo) * u[:, _JITTER]


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter(brightness=s, contrast=s, saturation=s) per image, each with its own random op order;
    factors [N, 3] and order [N, 3] (a permutation of 0..2 per image) already on the images' device."""
    x = images.to(torch.float32)
    for step in range(3):
        for op, fn in _JITTER_OPS.items():
            chosen = (order[:, step] == op).view(-1, 1, 1, 1)
            x = torch.where(chosen, fn(x, factors[:, op].view(-1, 1, 1, 1)), x)
    return x.to(torch.uint8)


# ------------------------------------------------------------------------------ eval


def eval_batch(images: Sequence[torch.Tensor], spec: EvalSpec) -> torch.Tensor:
    """uint8 [3, H_i, W_i] images → uint8 [N, 3, crop, crop]: resize shorter side (antialiased), center crop,
    ONE batched call for every size in the batch (core.resize, shared with serve)."""
    return eval_resize_crop(images, spec.resize, spec.crop, spec.interpolation)


__all__ = [
    "DRAWS_PER_IMAGE",
    "Uploads",
    "color_jitter",
    "eval_batch",
    "resized_crop_params",
    "train_batch",
    "train_geometry",
    "uniforms",
]
