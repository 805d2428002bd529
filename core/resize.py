"""One batched, antialiased resize + crop for images of any sizes, on any device: serve's eval transform
and the train feed's shrink both go through `resize_crop_many`, ONE call per batch however many sizes.

How: the antialiased resize of torch/PIL (`F.interpolate(..., antialias=True)`, which torchvision's
`resize` calls) is separable, out = Wy · X · Wxᵀ, with one weight matrix per axis per image. A crop of the
resized image is just a band of rows of those matrices, and a crop of the source is a band of columns.
So every image of a batch, whatever its size, is one slice of two batched matmuls over a zero-padded
stack: the weights are built on the device from 10 numbers per image (one small upload), and no per-size
Python loop or per-image interpolate call remains. Weights follow ATen's `_compute_weights_aa` (bilinear:
triangle; bicubic: Keys a = -0.5, the antialiased kernel; support scaled by the shrink factor) and
`nearest` picks floor(dst · in/out) like `F.interpolate(mode="nearest")`.

Equality with the per-image op (torchvision `resize` + `center_crop`), pinned by tests/core/test_resize.py:
at most 1 uint8 level against the float op rounded to uint8 (what torchvision does for uint8 on CUDA),
for bilinear, bicubic and nearest (nearest: exact). Against torch's CPU uint8 kernel (fixed point, rounds
and clamps between its two passes): bilinear at most 1 level; bicubic at most 4 on photo-like images (more on pure noise, where its first
pass overshoots 0..255 and is clamped early). With TF32 matmuls enabled (`torch.backends.cuda.matmul.allow_tf32`)
the bound would be a few levels; this project leaves TF32 matmuls off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

# elements of the padded float stack per matmul chunk (4 bytes each): bounds memory on full-size photos
CHUNK_ELEMENTS = 1 << 27


@dataclass(frozen=True)
class Plan:
    """Per image: source box (x0, y0, x1, y1), resized size (h, w), and the output window (top, left) of
    that resized image written to the output's [:out_h, :out_w] (rows past `rows`/`cols` stay zero)."""

    boxes: torch.Tensor  # int64 [N, 4]
    resized: torch.Tensor  # int64 [N, 2] (h, w)
    window: torch.Tensor  # int64 [N, 4] (top, left, rows, cols)

    def params(self) -> torch.Tensor:
        """[N, 10] float64: what the device needs to build the weights (one upload per batch)."""
        b, r, w = self.boxes, self.resized, self.window
        y = torch.stack([b[:, 1], b[:, 3] - b[:, 1], r[:, 0], w[:, 0], w[:, 2]], 1)
        x = torch.stack([b[:, 0], b[:, 2] - b[:, 0], r[:, 1], w[:, 1], w[:, 3]], 1)
        return torch.cat([y, x], 1).to(torch.float64)


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


def _keys(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


_FILTERS: dict[str, tuple[float, Callable[[torch.Tensor], torch.Tensor]]] = {
    "bilinear": (1.0, _triangle),
    "bicubic": (2.0, _keys),
}


def axis_weights(p: torch.Tensor, pad: int, count: int, interpolation: str) -> torch.Tensor:
    """[N, count, pad] float32 weights for one axis from params p [N, 5] = (lo, n_in, n_out, start, rows)
    on the device: output row i reads source index lo + j of a segment n_in long resized to n_out, row
    start + i of the resized axis; rows >= `rows` are zero."""
    lo, n_in, n_out, start, rows = (p[:, k].view(-1, 1, 1) for k in range(5))
    i = torch.arange(count, device=p.device, dtype=p.dtype).view(1, -1, 1)
    jj = torch.arange(pad, device=p.device, dtype=p.dtype).view(1, 1, -1) - lo  # index in the segment
    scale = n_in / n_out
    inside = (jj >= 0) & (jj < n_in)
    if interpolation == "nearest":
        f32 = torch.float32  # ATen's nearest index math is in float: same rounding at the boundaries
        src = torch.minimum(torch.floor((i + start).to(f32) * scale.to(f32)).to(p.dtype), n_in - 1)
        w = (jj == src).to(p.dtype)
    else:
        support, kernel = _FILTERS[interpolation]
        stretch = scale.clamp(min=1.0)  # shrinking widens the filter: the antialias
        center = scale * (i + start + 0.5)
        w = kernel((jj - center + 0.5) / stretch) * inside
        # torch/PIL skip taps past support·stretch; the kernels are zero there already
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    return (w * (i < rows)).to(torch.float32)


def _chunks(areas: list[int], budget: int) -> list[slice]:
    """Consecutive runs of images whose padded float stack stays under `budget` elements."""
    out, start, hmax, wmax = [], 0, 0, 0
    for k, (h, w) in enumerate(areas):
        nh, nw = max(hmax, h), max(wmax, w)
        if k > start and (k + 1 - start) * 3 * nh * nw > budget:
            out.append(slice(start, k))
            start, nh, nw = k, h, w
        hmax, wmax = nh, nw
    out.append(slice(start, len(areas)))
    return out


def resize_crop_many(
    images: Sequence[torch.Tensor],
    plan: Plan,
    out_hw: tuple[int, int],
    interpolation: str = "bilinear",
    params: torch.Tensor | None = None,
    budget: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """[3, H_i, W_i] images (uint8 or float, one device) → float32 [N, 3, *out_hw], each its plan's resize
    and crop (unrounded). `params`: plan.params() already on the device (a caller batching its uploads)."""
    n, device = len(images), images[0].device if images else torch.device("cpu")
    out = torch.zeros(n, 3, *out_hw, dtype=torch.float32, device=device)
    if not n:
        return out
    if params is None:  # pinned, so the copy does not block the host on CUDA
        params = plan.params()
        params = params.pin_memory() if device.type == "cuda" else params
    p = params.to(device, non_blocking=True)
    boxes = plan.boxes.tolist()  # host data: no device sync
    sizes = [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in boxes]
    for part in _chunks(sizes, budget):
        members = range(part.start, part.stop)
        hpad = max(sizes[k][0] for k in members)
        wpad = max(sizes[k][1] for k in members)
        stack = torch.zeros(len(members), 3, hpad, wpad, dtype=torch.float32, device=device)
        for slot, k in enumerate(members):  # cut each box into the stack (the copy converts to float)
            x0, y0, x1, y1 = boxes[k]
            stack[slot, :, : y1 - y0, : x1 - x0].copy_(images[k][:, y0:y1, x0:x1])
        pp = p[part].clone()
        pp[:, 0] = 0  # the stack holds each box from its corner
        pp[:, 5] = 0
        wy = axis_weights(pp[:, :5], hpad, out_hw[0], interpolation)
        wx = axis_weights(pp[:, 5:], wpad, out_hw[1], interpolation)
        out[part] = wy[:, None] @ stack @ wx[:, None].transpose(-1, -2)
    return out


def eval_plan(sizes: Sequence[tuple[int, int]], resize: int, crop: int) -> Plan:
    """torchvision Resize(resize) (shorter side; longer side truncated) then CenterCrop(crop)."""
    boxes, resized, window = [], [], []
    for h, w in sizes:
        rh, rw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
        top, left = round((rh - crop) / 2.0), round((rw - crop) / 2.0)  # center_crop's offsets
        boxes.append((0, 0, w, h))
        resized.append((rh, rw))
        window.append((top, left, crop, crop))
    return Plan(*(torch.tensor(rows, dtype=torch.int64) for rows in (boxes, resized, window)))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def eval_resize_crop(
    images: Sequence[torch.Tensor], resize: int, crop: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """The eval transform's resize + center crop for a batch of any sizes → uint8 [N, 3, crop, crop]."""
    if not images:
        return torch.empty(0, 3, crop, crop, dtype=torch.uint8)
    plan = eval_plan([(int(im.shape[-2]), int(im.shape[-1])) for im in images], resize, crop)
    return to_uint8(resize_crop_many(images, plan, (crop, crop), interpolation))


__all__ = ["CHUNK_ELEMENTS", "Plan", "axis_weights", "eval_plan", "eval_resize_crop", "resize_crop_many"]
