"""Transforms for the preprocessing specs (core.specs). Images travel as uint8 CHW; normalization runs on the device.

Keeping mean/std out of the CPU transforms means the same uint8 tensor feeds training, the ONNX
graph (normalization inside) and serving, and transfers to the GPU at a quarter of float32's size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from core.augment import TrainWarp
from core.images import check_resize_output
from core.specs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATION_NAMES,
    AugmentSpec,
    EvalSpec,
    default_spec_for,
)

INTERPOLATIONS = {name: InterpolationMode(name) for name in INTERPOLATION_NAMES}  # "bilinear" → BILINEAR


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; valid: {', '.join(INTERPOLATIONS)}") from None


class ResizeBound:
    """The first eval step: refuse (core.images.TooElongated) an image whose resize would be huge."""

    def __init__(self, spec: EvalSpec):
        self.resize, self.crop = spec.resize, spec.crop

    def __call__(self, image: Image.Image) -> Image.Image:
        check_resize_output(*image.size, self.resize, self.crop)
        return image


def eval_transform(spec: EvalSpec) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image → uint8 tensor [3, crop, crop], exactly as at validation time; an image too
    elongated to resize within bounds raises core.images.TooElongated (a BadImage)."""
    return T.Compose(
        [
            ResizeBound(spec),
            T.PILToTensor(),
            T.Resize(spec.resize, interpolation=interpolation_mode(spec.interpolation), antialias=True),
            T.CenterCrop(spec.crop),
        ]
    )


def train_transform(aug: AugmentSpec, spec: EvalSpec) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image → augmented uint8 tensor [3, crop, crop] (core.augment: one warp at output size)."""
    return TrainWarp(aug, spec) if aug.enabled else eval_transform(spec)


class Normalize(torch.nn.Module):
    """uint8 (or 0..255 float) NCHW → normalized float. Lives on the device and inside exported graphs."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("inv_std", 1.0 / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) * self.inv_std


class WithPreprocessing(torch.nn.Module):
    """A classifier that takes uint8 RGB [N, 3, crop, crop] and returns logits: what export and serve run."""

    def __init__(self, model: torch.nn.Module, spec: EvalSpec):
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


__all__ = [
    "AugmentSpec",
    "EvalSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "Normalize",
    "WithPreprocessing",
    "default_spec_for",
    "eval_transform",
    "interpolation_mode",
    "train_transform",
]
