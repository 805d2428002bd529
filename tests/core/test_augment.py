"""The one-warp CPU training transform: torchvision's step-by-step result, from crop-sized work only."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from core.augment import TrainWarp
from core.preprocess import AugmentSpec, EvalSpec, train_transform


def smooth_image(height: int = 300, width: int = 400) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return TF.gaussian_blur(
        torch.stack([x * 0.6, y * 0.8, (x + y) * 0.3]).clamp(0, 255).to(torch.uint8), [9, 9]
    )


def stepwise(img: torch.Tensor, angle: float, box: tuple, flip: bool, size: int, crop: int) -> torch.Tensor:
    """What torchvision's RandomRotation → RandomResizedCrop → flip → CenterCrop give for these draws."""
    out = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR) if angle else img
    out = TF.resized_crop(out, *box, [size, size], antialias=True)
    return TF.center_crop(TF.horizontal_flip(out) if flip else out, [crop, crop])


@pytest.mark.parametrize(
    "angle, box, flip, size",
    [
        (0.0, (20, 30, 200, 250), False, 64),
        (0.0, (20, 30, 200, 250), True, 80),
        (25.0, (50, 60, 150, 200), False, 64),
        (-25.0, (50, 60, 150, 200), True, 80),
        (12.0, (100, 150, 40, 30), True, 64),  # upscaling a small box
    ],
)
def test_one_warp_equals_torchvision_step_by_step_for_the_same_draws(angle, box, flip, size):
    img = smooth_image()
    warp = TrainWarp(AugmentSpec(rotation=abs(angle), size=size), EvalSpec(resize=64, crop=64))
    warp.params = lambda _img: (angle, box, flip)
    got = warp(TF.to_pil_image(img))
    want = stepwise(img, angle, box, flip, size, 64)
    diff = (got.int() - want.int()).abs()
    assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
    if not angle:
        assert diff.max() <= 1
    else:  # one resampling instead of two (and a box pre-filter): equal up to rounding away from black corners
        assert diff.float().mean() < 0.6 and (diff > 3).float().mean() < 0.01


def test_rotation_never_touches_the_full_resolution_image(monkeypatch):
    """The cost fix: no full-image rotation, and the warp computes only crop×crop output pixels."""

    def refuse(*args, **kwargs):
        raise AssertionError("full-resolution rotation")

    monkeypatch.setattr(TF, "rotate", refuse)
    monkeypatch.setattr(TF, "rotate_image", refuse)
    monkeypatch.setattr(Image.Image, "rotate", refuse)
    warped = []
    transform = Image.Image.transform
    monkeypatch.setattr(
        Image.Image,
        "transform",
        lambda self, size, *a, **k: warped.append(size) or transform(self, size, *a, **k),
    )
    tf = train_transform(AugmentSpec(rotation=30.0, size=80), EvalSpec(resize=73, crop=64))
    big = TF.to_pil_image(smooth_image(900, 1200))
    for _ in range(5):
        assert tf(big).shape == (3, 64, 64)
    assert warped == [(64, 64)] * 5


def test_same_torch_seed_gives_the_same_augmentation():
    """Workers seed torch per (seed, epoch, index): the transform must draw from torch's RNG only."""
    pil = TF.to_pil_image(smooth_image(120, 160))
    tf = train_transform(AugmentSpec(rotation=20.0, color_jitter=0.3, size=40), EvalSpec(resize=36, crop=32))
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(torch.stack([tf(pil) for _ in range(4)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
