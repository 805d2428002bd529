"""CPU cost per image of our training transform vs the tutorials' torchvision Compose, in one run.

    python train/bench_augment.py                      # 500×375 JPEGs → 128 px crop, rotation 30
    python train/bench_augment.py --rotation 0 --images 32 --rounds 5

All transforms run on the same decoded images (core.images.decode_image, as the DataLoader workers
do), one thread (a worker's setting), interleaved round by round so a busy machine slows all of them
alike; the figure per transform is its median round. `tutorial` is the Flowers/Caltech notebooks'
Compose([RandomRotation, RandomResizedCrop, RandomHorizontalFlip, ToTensor]); `ours` is
core.preprocess.train_transform; `stepwise` is our previous transform (full-resolution rotation,
then crop), kept here as the figure the one-warp version replaced.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T1
from torchvision.transforms import v2 as T

from core.images import decode_image
from core.preprocess import AugmentSpec, default_spec_for, train_transform


def photo_like_jpegs(dst: Path, count: int, width: int, height: int) -> list[Path]:
    """Smooth random colour fields with some texture: JPEG-compressible like photos, not flat."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (height, width, 3))
        arr = np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        paths.append(dst / f"{k:04d}.jpg")
        Image.fromarray(arr).save(paths[-1], quality=90)
    return paths


def tutorial_transform(rotation: float, crop: int) -> Callable:
    return T1.Compose(
        [T1.RandomRotation(rotation), T1.RandomResizedCrop(crop), T1.RandomHorizontalFlip(), T1.ToTensor()]
    )


def stepwise_transform(rotation: float, crop: int) -> Callable:
    """The transform core.preprocess used before the one-warp version (rotate the full image, then crop)."""
    steps = [T.PILToTensor()] + ([T.RandomRotation(rotation)] if rotation else [])
    return T.Compose(steps + [T.RandomResizedCrop(crop, antialias=True), T.RandomHorizontalFlip()])


def time_rounds(transforms: dict[str, Callable], images: list[Image.Image], rounds: int) -> dict[str, float]:
    """Median seconds per image of each transform; rounds interleave the transforms."""
    per_round: dict[str, list[float]] = {name: [] for name in transforms}
    for _ in range(rounds):
        for name, tf in transforms.items():
            t0 = time.perf_counter()
            for img in images:
                tf(img)
            per_round[name].append((time.perf_counter() - t0) / len(images))
    return {name: statistics.median(times) for name, times in per_round.items()}


def run(args: argparse.Namespace) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_like_jpegs(Path(tmp), args.images, args.width, args.height)
        images = [decode_image(p) for p in paths]
    spec = default_spec_for(args.crop)
    transforms = {
        "tutorial": tutorial_transform(args.rotation, args.crop),
        "ours": train_transform(AugmentSpec(rotation=args.rotation), spec),
        "stepwise": stepwise_transform(args.rotation, args.crop),
    }
    time_rounds(transforms, images[:2], 1)  # warm-up: first calls allocate and import lazily
    result = time_rounds(transforms, images, args.rounds)
    result["ours_vs_tutorial"] = result["ours"] / result["tutorial"]
    result["stepwise_vs_tutorial"] = result["stepwise"] / result["tutorial"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python train/bench_augment.py", description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="number of decoded images (default %(default)s)")
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--crop", type=int, default=128, help="output crop (default %(default)s)")
    ap.add_argument(
        "--rotation", type=float, default=30.0, help="RandomRotation degrees (default %(default)s)"
    )
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds; the median is reported")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    r = run(args)
    print(
        f"{args.images} images {args.width}x{args.height} JPEG-decoded → {args.crop} px, rotation "
        f"{args.rotation:g}, 1 thread, median of {args.rounds} rounds"
    )
    for name in ("tutorial", "ours", "stepwise"):
        print(f"  {name:9s} {r[name] * 1e3:7.3f} ms/image   {r[name] / r['tutorial']:.2f}× tutorial")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
