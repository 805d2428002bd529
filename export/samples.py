"""The parity gate's inputs: real images, decoded and preprocessed as serve does, or loud random tensors."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.bundle import BundleRecord
from core.errors import UserError
from core.images import IMAGE_EXTENSIONS, TOO_ELONGATED, BadImage, decode_image, is_image_file
from core.preprocess import EvalSpec, eval_transform
from core.tree import files_under

RANDOM_WARNING = (
    "no real images: the parity gate ran on RANDOM uint8 tensors, which prove far less than "
    "real images; pass --images DIR (e.g. your validation folder)"
)


@dataclass
class Samples:
    """uint8 [N, 3, crop, crop] images with where they came from; labels are class indices or -1."""

    images: torch.Tensor
    paths: list[str]
    labels: list[int]
    source: str  # "images" (--images), "valid_dir" (bundle lineage), "train_dir", "random"
    root: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "root": self.root,
            "count": len(self.paths),
            "labelled": sum(lab >= 0 for lab in self.labels),
            "skipped": self.skipped,
        }
        if self.source == "random":
            d["warning"] = RANDOM_WARNING
        return d


def find_images(root: Path, cap: int) -> list[Path]:
    """Image files under `root` (recursive, sorted); when more than `cap`, an evenly spaced subset so that
    every class folder of a sorted ImageFolder tree is represented, not just the first few."""
    found = [Path(f) for f in files_under(root) if is_image_file(f)]  # iterative: any depth
    if len(found) <= cap:
        return found
    step = len(found) / cap
    return [found[int(i * step)] for i in range(cap)]


def _label(path: Path, class_index: dict[str, int]) -> int:
    """ImageFolder layout: the parent folder names the class; anything else is unlabelled (-1)."""
    return class_index.get(path.parent.name, -1)


def load_samples(root: Path, spec: EvalSpec, classes: list[str], cap: int, source: str) -> Samples:
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    files = find_images(root, cap)
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"no images under {root} (looked for {exts}, recursively)")
    transform = eval_transform(spec)
    class_index = {c: i for i, c in enumerate(classes)}
    tensors, paths, labels, skipped = [], [], [], []
    for f in files:
        try:
            tensors.append(transform(decode_image(f)))
        except BadImage as exc:
            skipped.append({"path": str(f), "reason": str(exc)})
            continue
        paths.append(str(f))
        labels.append(_label(f, class_index))
    _warn_elongated(root, skipped)
    if not tensors:
        raise UserError(
            f"none of the {len(files)} images under {root} could be decoded "
            f"(first: {skipped[0]['path']}: {skipped[0]['reason']})"
        )
    return Samples(torch.stack(tensors), paths, labels, source, str(root), skipped)


def random_samples(spec: EvalSpec, n: int = 32, seed: int = 0) -> Samples:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, spec.crop, spec.crop), dtype=torch.uint8, generator=g)
    return Samples(images, [f"random:{i}" for i in range(n)], [-1] * n, "random")


def lineage_dir(record: BundleRecord, key: str) -> Path | None:
    """record.lineage["dataset"][key] (valid_dir / train_dir, written by train) when it exists on disk."""
    value = (record.lineage.get("dataset") or {}).get(key)
    return Path(value) if value and Path(value).is_dir() else None


def gate_samples(images: str | None, record: BundleRecord, cap: int) -> Samples:
    """--images DIR, else the bundle's validation folder, else random tensors (said loudly)."""
    spec, classes = record.preprocess, record.classes
    if images:
        return load_samples(Path(images), spec, classes, cap, "images")
    valid = lineage_dir(record, "valid_dir")
    if valid is not None:
        return load_samples(valid, spec, classes, cap, "valid_dir")
    return random_samples(spec, n=min(cap, 32))


def _warn_elongated(root: Path, skipped: list[dict[str, str]]) -> None:
    """Panoramas are valid images the bounded resize refuses (core.images.TooElongated): say so once."""
    thin = [s for s in skipped if s["reason"].startswith(TOO_ELONGATED)]
    if thin:
        print(
            f"warning: {len(thin)} image(s) under {root} skipped as too elongated to resize "
            f"(first: {thin[0]['path']}: {thin[0]['reason']})",
            file=sys.stderr,
            flush=True,
        )
