"""Measure data.balance and the EMA + MixUp/CutMix recipe on demo data built for it (CPU, fixed seeds).

`python tools/bench_recipe.py balance OUT` : 6 demo classes, 3 of them at 1/10 of the training images;
none vs sampler vs loss at equal epochs, test macro F1 per seed.
`python tools/bench_recipe.py recipe OUT` : the same grey classes balanced (60 training images each), the
demo recipe with and without EMA + MixUp/CutMix at equal epochs, test accuracy and macro F1 per seed.
`--epochs 18 --tag=-e18` for longer runs (the tag keeps their run names apart). Both at 32 px (the demo's colours make its classes too easy to separate: ~0.99 whatever the recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from core.demo_data import make_demo_dataset  # noqa: E402

TINY = ["preprocess.resize=36", "preprocess.crop=32", "data.num_workers=0", "train.log_every=1000"]
ARMS = {
    "balance": {
        "none": ["data.balance=none"],
        "sampler": ["data.balance=sampler"],
        "loss": ["data.balance=loss"],
    },
    "recipe": {
        "plain": [],
        "ema": ["train.ema_decay=0.99"],
        "mix": ["augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"],
        "ema+mix": ["train.ema_decay=0.99", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0"],
    },
}


def grey_data(root: Path, majority: int, minority: int, held: int, seed: int) -> Path:
    """6 grey demo classes with `majority` training images; classes 4-6 keep `minority` of theirs."""
    if (root / "train").is_dir():
        return root
    make_demo_dataset(root, 6, {"train": majority, "valid": held, "test": held}, size=40, seed=seed)
    for cls in ("4", "5", "6"):
        for path in sorted((root / "train" / cls).iterdir())[minority:]:
            path.unlink()
    # grey: the demo's hue per class makes any split easy; shape alone leaves room for imbalance to matter
    for path in root.rglob("*"):
        if path.suffix.lower() in (".jpg", ".png"):
            Image.open(path).convert("L").convert("RGB").save(path)
    return root


def run(out: Path, data: Path, name: str, overrides: list[str]) -> dict:
    run_dir = out / "runs" / name
    metrics = run_dir / "test_metrics.json"
    if not metrics.is_file():
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "train.main", "--config", str(REPO / "configs" / "demo.yaml")]
        cmd += [f"data.root={data}", f"run.output_dir={out / 'runs'}", f"run.name={name}", *overrides]
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    m = json.loads(metrics.read_text())
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=list(ARMS))
    ap.add_argument("--arms", nargs="+", help="only these arms")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--tag", default="", help="suffix of the run names (e.g. the epoch count)")
    args = ap.parse_args()
    if args.what == "balance":
        data = grey_data(args.out / "data_imbalanced", 100, 10, 50, seed=7)
    else:  # balanced: 60 training images in every class
        data = grey_data(args.out / "data_grey", 60, 60, 50, seed=7)
    base = [*TINY, f"train.epochs={args.epochs}"]
    results = {}
    for arm, extra in ARMS[args.what].items():
        if args.arms and arm not in args.arms:
            continue
        for seed in args.seeds:
            name = f"{args.what}{args.tag}-{arm}-s{seed}"
            results[name] = run(args.out, data, name, [*base, f"run.seed={seed}", *extra])
            print(name, json.dumps(results[name]), flush=True)
    (args.out / f"{args.what}{args.tag}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
