"""The preprocessing a model is trained and served with, as plain data (no torch: the config imports this).

core.preprocess turns these specs into transforms; keeping them here lets `--help` and config
validation run without importing torch or torchvision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION_NAMES = ("nearest", "bilinear", "bicubic")


@dataclass
class EvalSpec:
    """The eval preprocessing a model was trained with: Resize(shorter side) → CenterCrop → normalize."""

    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSpec:
        return cls(
            resize=int(d["resize"]),
            crop=int(d["crop"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
        )


@dataclass
class AugmentSpec:
    """Train-time augmentation, applied in this order: rotation → random resized crop → flip → center crop.

    `size` is the random-resized-crop output (default: the eval crop); when it is larger than the
    crop, a center crop follows (the Caltech tutorial's RandomResizedCrop(256) → CenterCrop(224)).
    `enabled: false` trains on the eval transform (the CIFAR tutorial).
    """

    enabled: bool = True
    rotation: float = 0.0
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    size: int | None = None
    hflip: float = 0.5
    color_jitter: float = 0.0


def default_spec_for(crop: int, resize: int | None = None, **kw: Any) -> EvalSpec:
    """The tutorials' 256→224 ratio applied to any crop size."""
    return EvalSpec(resize=resize or round(crop * 256 / 224), crop=crop, **kw)
