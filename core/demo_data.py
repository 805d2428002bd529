"""A small, deterministic, learnable image folder: coloured shapes on noisy backgrounds, no download needed.

Layout matches the tutorials (root/train|valid|test/<class>/*, cat_to_name.json); class folders are
numbers like Flowers-102's, so string ordering and display names are exercised. Each class is a
shape with its own hue family, so even a small network trained from scratch learns it in an epoch or two.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.errors import UserError
from core.fsio import shown_as

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
HUES = ((220, 50, 50), (50, 170, 60), (50, 90, 220), (230, 190, 40), (170, 60, 200), (40, 200, 200))
DEFAULT_SPLITS = {"train": 24, "valid": 8, "test": 8}
MARKER = "demo_data.json"  # the settings a folder was made with: a rerun with the same ones keeps it


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, color: tuple) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif kind == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=(128, 128, 128))


def make_image(class_index: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    noise = rng.normal(128, 30, (h, w, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(img)
    r = min(w, h) * rng.uniform(0.22, 0.38)
    cx = rng.uniform(r, w - r)
    cy = rng.uniform(r, h - r)
    base = np.array(HUES[class_index % len(HUES)], dtype=float)
    color = tuple(int(c) for c in np.clip(base + rng.normal(0, 18, 3), 0, 255))
    _shape(draw, SHAPES[class_index % len(SHAPES)], cx, cy, r, color)
    return img


def make_demo_dataset(
    root: str | Path,
    num_classes: int = 4,
    per_split: dict[str, int] | None = None,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the demo image folder under `root`; returns `root`. Same seed → byte-identical files."""
    root = Path(root)
    per_split = per_split or DEFAULT_SPLITS
    if num_classes > len(SHAPES):
        raise ValueError(f"at most {len(SHAPES)} demo classes")
    names = {}
    for s_i, (split, count) in enumerate(per_split.items()):
        for c in range(num_classes):
            folder = str(c + 1)
            names[folder] = SHAPES[c]
            out = root / split / folder
            out.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([seed, s_i, c])
            for i in range(count):
                # Varied sizes and aspect ratios, like real photos; every 4th image a PNG.
                wh = (int(size * rng.uniform(1.0, 1.5)), int(size * rng.uniform(1.0, 1.5)))
                img = make_image(c, rng, wh)
                if i % 4 == 3:
                    img.save(out / f"{split}_{folder}_{i:04d}.png")
                else:
                    img.save(out / f"{split}_{folder}_{i:04d}.jpg", quality=90)
    (root / "cat_to_name.json").write_text(json.dumps(names, indent=2) + "\n")
    return root


def _count(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.suffix in (".jpg", ".png"))


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_once(root: Path, settings: dict) -> str:
    """Write the demo set unless `root` already holds it with these settings; never mixes into other files.

    Built in a hidden sibling folder and renamed into place, so an interrupted run leaves nothing half-made.
    """
    if _read_marker(root) == settings:
        return f"{root} already holds the demo data set ({_count(root)} images, same settings); kept"
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(
            f"{root} exists and is not a demo data set made with these settings; "
            "pass a new or empty folder (or delete this one)"
        )
    tmp = root.parent / f".{root.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with shown_as(tmp, root):  # a full disk names DST, not our hidden folder
            make_demo_dataset(
                tmp, settings["classes"], settings["splits"], settings["size"], settings["seed"]
            )
            (tmp / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
        os.replace(tmp, root)  # onto an absent or empty folder
    except BaseException:  # a full disk or a Ctrl-C: the half-made folder would hold the space the user frees
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return f"wrote {_count(root)} images in {settings['classes']} classes to {root}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="imgclf-demo-data",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("dst", help="output folder")
    ap.add_argument("--classes", type=int, default=4, help="number of classes")
    ap.add_argument("--train", type=int, default=DEFAULT_SPLITS["train"], help="images per class in train/")
    ap.add_argument("--valid", type=int, default=DEFAULT_SPLITS["valid"], help="images per class in valid/")
    ap.add_argument("--test", type=int, default=DEFAULT_SPLITS["test"], help="images per class in test/")
    ap.add_argument("--size", type=int, default=64, help="shorter side in pixels (roughly)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (the same seed, the same images)")
    a = ap.parse_args(argv)
    settings = {
        "classes": a.classes,
        "splits": {"train": a.train, "valid": a.valid, "test": a.test},
        "size": a.size,
        "seed": a.seed,
    }
    print(write_once(Path(a.dst), settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
