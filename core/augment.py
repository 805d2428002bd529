"""The CPU training augmentation as one warp: rotation → random resized crop → flip → center crop.

The step-by-step version (torchvision's RandomRotation → RandomResizedCrop → flip) rotates the
full-resolution image and then throws most of it away; that cost ~4× the tutorials' transform per
image. Here the random parameters are drawn exactly as torchvision draws them (its own get_params,
from torch's RNG, so a sample stays a pure function of the per-sample seed), composed into one
affine map from output pixels to source pixels, and only the output pixels are computed:

* no rotation: torchvision's antialiased resized crop of the box (as before: only crop-box pixels);
* rotation: the needed source region box-averaged (PIL Image.reduce) to less than 2× the output
  scale, then one PIL affine warp at output size (rotation, crop, flip at once; outside the image is
  black, as RandomRotation's fill=0).

With color jitter and a larger `augment.size`, the size×size image is produced first so contrast
sees the same pixels as before; otherwise only the crop×crop output is ever computed.
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms as T1
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from core.specs import AugmentSpec, EvalSpec

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

Affine = tuple[
    float, float, float, float, float, float
]  # (a, b, c, d, e, f): x = a·u + b·v + c, y = d·u + e·v + f


class TrainWarp:
    """PIL RGB image → augmented uint8 tensor [3, crop, crop], randomness from torch's global RNG."""

    def __init__(self, aug: AugmentSpec, spec: EvalSpec):
        self.aug, self.crop = aug, spec.crop
        self.size = aug.size or spec.crop
        self.resample = RESAMPLE[spec.interpolation]
        self.interpolation = InterpolationMode(spec.interpolation)
        cj = aug.color_jitter
        self.jitter = T.ColorJitter(brightness=cj, contrast=cj, saturation=cj) if cj else None
        # jitter's contrast uses the mean of the whole size×size image: keep it when a center crop follows
        self.out = self.size if self.jitter is not None else self.crop

    def params(self, img: Image.Image) -> tuple[float, tuple[int, int, int, int], bool]:
        """(angle, (top, left, h, w), flip), drawn in the order and way torchvision's transforms draw them."""
        angle = (
            T1.RandomRotation.get_params([-self.aug.rotation, self.aug.rotation])
            if self.aug.rotation
            else 0.0
        )
        box = T1.RandomResizedCrop.get_params(img, list(self.aug.scale), list(self.aug.ratio))
        flip = bool(self.aug.hflip) and bool(torch.rand(1) < self.aug.hflip)
        return angle, box, flip

    def __call__(self, img: Image.Image) -> torch.Tensor:
        angle, box, flip = self.params(img)
        x = self._rotated(img, angle, box, flip) if angle else self._resized(img, box, flip)
        if self.jitter is not None:
            x = self.jitter(x)
        if self.out != self.crop:
            x = T.functional.center_crop(x, [self.crop, self.crop])
        return x

    def _window(self, box: tuple[int, int, int, int], flip: bool) -> tuple[float, float, float, float]:
        """The part of the crop box that lands in the output: (x0, y0, x1, y1), flip not yet applied."""
        top, left, h, w = box
        off = round((self.size - self.out) / 2.0)  # torchvision's center_crop offset
        sx, sy = w / self.size, h / self.size
        x0 = left + (self.size - off - self.out if flip else off) * sx
        y0 = top + off * sy
        return x0, y0, x0 + self.out * sx, y0 + self.out * sy

    def _resized(self, img: Image.Image, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
        """torchvision's own resized crop + flip: exact, and faster than PIL's boxed resize."""
        x = T.functional.resized_crop(
            T.functional.pil_to_tensor(img),
            *box,
            [self.size, self.size],
            interpolation=self.interpolation,
            antialias=True,
        )
        x = T.functional.horizontal_flip(x) if flip else x
        return T.functional.center_crop(x, [self.out, self.out]) if self.out != self.size else x

    def _rotated(
        self, img: Image.Image, angle: float, box: tuple[int, int, int, int], flip: bool
    ) -> torch.Tensor:
        mapping = self._output_to_source(img.size, angle, box, flip)
        src, mapping = _preshrink(img, mapping, self.out)
        out = src.transform((self.out, self.out), Image.Transform.AFFINE, mapping, self.resample)
        return T.functional.pil_to_tensor(out)

    def _output_to_source(
        self, wh: tuple[int, int], angle: float, box: tuple[int, int, int, int], flip: bool
    ) -> Affine:
        """Output pixel (u, v) → source (x, y), continuous coordinates (pixel k spans [k, k+1))."""
        x0, y0, x1, y1 = self._window(box, flip)
        sx, sy = (x1 - x0) / self.out, (y1 - y0) / self.out
        # crop/flip: (u, v) → rotated-image point (px, py)
        pa, pc = (-sx, x1) if flip else (sx, x0)
        # torchvision rotate: counter-clockwise by `angle` about the centre; its inverse maps output → input
        cx, cy = wh[0] / 2, wh[1] / 2
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        # (x, y) = centre + [[cos, -sin], [sin, cos]] · (p − centre)
        return (
            cos * pa,
            -sin * sy,
            cx + cos * (pc - cx) - sin * (y0 - cy),
            sin * pa,
            cos * sy,
            cy + sin * (pc - cx) + cos * (y0 - cy),
        )


def _preshrink(img: Image.Image, m: Affine, out: int) -> tuple[Image.Image, Affine]:
    """Antialias a downscaling warp: box-average (Image.reduce) the needed source region by an integer factor.

    Returns the image to warp and the mapping into it. A bilinear warp alone samples a source shrunk
    by k only every k pixels (aliasing); after the reduce it shrinks by less than 2. Reduce is the
    fast box filter: a filtered resize here cost as much as the whole tutorial transform.
    """
    k = math.floor(
        min(math.hypot(m[0], m[3]), math.hypot(m[1], m[4]))
    )  # source px per output px, smaller axis
    if k < 2:
        return img, m
    corners = [(m[0] * u + m[1] * v + m[2], m[3] * u + m[4] * v + m[5]) for u in (0, out) for v in (0, out)]
    margin = 2 * k  # the bilinear taps at the region's edge, in source pixels
    width, height = img.size
    x0 = max(0, math.floor(min(c[0] for c in corners)) - margin)
    y0 = max(0, math.floor(min(c[1] for c in corners)) - margin)
    x1 = min(width, math.ceil(max(c[0] for c in corners)) + margin)
    y1 = min(height, math.ceil(max(c[1] for c in corners)) + margin)
    if x1 <= x0 or y1 <= y0:  # the whole output lies outside the image: black, as the rotation's fill
        return Image.new(img.mode, (1, 1)), (0.0, 0.0, -1.0, 0.0, 0.0, -1.0)
    small = img.reduce(k, box=(x0, y0, x1, y1))  # cell j averages source [x0 + k·j, x0 + k·(j+1))
    return small, (m[0] / k, m[1] / k, (m[2] - x0) / k, m[3] / k, m[4] / k, (m[5] - y0) / k)
