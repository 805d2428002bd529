"""core.resize: one batched resize + crop for images of any sizes equals the per-image torchvision op."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from core.preprocess import interpolation_mode
from core.resize import Plan, _chunks, eval_resize_crop, resize_crop_many

SIZES = [(60, 80), (90, 41), (37, 37), (200, 130), (33, 50), (128, 128), (41, 90)]


def image(h: int, w: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(9 * x + seed), np.cos(7 * y - seed), np.sin(5 * (x + y))], 0) * 100 + 128
    return torch.from_numpy((base + rng.normal(0, 20, base.shape)).clip(0, 255).astype(np.uint8))


def per_image(
    img: torch.Tensor, resize: int, crop: int, interpolation: str, float_path: bool
) -> torch.Tensor:
    x = img.float() if float_path else img
    out = TF.resize(x, [resize], interpolation=interpolation_mode(interpolation), antialias=True)
    out = TF.center_crop(out, [crop, crop])
    return out.round().clamp(0, 255).to(torch.uint8) if float_path else out


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_batched_resize_crop_equals_the_per_image_float_op_within_one_level(interpolation):
    """The float op rounded to uint8 is what torchvision does for uint8 images on CUDA."""
    images = [image(h, w, k) for k, (h, w) in enumerate(SIZES)]
    got = eval_resize_crop(images, 40, 32, interpolation)
    assert got.shape == (len(SIZES), 3, 32, 32) and got.dtype == torch.uint8
    for img, g in zip(images, got):
        want = per_image(img, 40, 32, interpolation, float_path=True)
        diff = (g.int() - want.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.3


@pytest.mark.parametrize(("interpolation", "bound"), [("bilinear", 1), ("bicubic", 4)])
def test_batched_resize_crop_is_near_torchs_cpu_uint8_kernel(interpolation, bound):
    """The CPU uint8 kernel rounds and clamps between its two passes: bicubic overshoot is cut early."""
    images = [image(h, w, k) for k, (h, w) in enumerate(SIZES)]
    got = eval_resize_crop(images, 40, 32, interpolation)
    for img, g in zip(images, got):
        assert (g.int() - per_image(img, 40, 32, interpolation, float_path=False).int()).abs().max() <= bound


def test_a_box_is_cut_before_resizing_and_the_rest_of_the_output_is_zero():
    img = image(50, 60, 1)
    plan = Plan(
        boxes=torch.tensor([[10, 5, 40, 45]]),  # x0, y0, x1, y1: a 40 x 30 box
        resized=torch.tensor([[20, 15]]),
        window=torch.tensor([[0, 0, 20, 15]]),
    )
    out = resize_crop_many([img], plan, (24, 24))
    want = TF.resize(img[:, 5:45, 10:40].float(), [20, 15], antialias=True)
    assert (out[0, :, :20, :15] - want).abs().max() < 1e-3
    assert out[0, :, 20:].abs().sum() == 0 and out[0, :, :, 15:].abs().sum() == 0


def test_an_unscaled_box_is_copied_exactly():
    img = image(30, 30, 2)
    plan = Plan(torch.tensor([[3, 4, 23, 20]]), torch.tensor([[16, 20]]), torch.tensor([[0, 0, 16, 20]]))
    out = resize_crop_many([img], plan, (16, 20))
    assert torch.equal(out[0].round().to(torch.uint8), img[:, 4:20, 3:23])


def test_a_small_memory_budget_splits_the_batch_without_changing_the_result():
    images = [image(h, w, k) for k, (h, w) in enumerate(SIZES)]
    whole = eval_resize_crop(images, 40, 32)
    from core import resize

    plan = resize.eval_plan([tuple(im.shape[-2:]) for im in images], 40, 32)
    parts = resize.to_uint8(resize_crop_many(images, plan, (32, 32), budget=3 * 100 * 100))
    assert torch.equal(whole, parts)
    assert len(_chunks([(100, 100)] * 4, 3 * 100 * 100)) == 4 and len(_chunks([(10, 10)] * 4, 10**6)) == 1
