"""Shared constants and the subprocess environment for the training tests (launch lines: tests/launchers.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.bundle import read_record

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "train" / "main.py"
CONFIGS = REPO / "configs"
DEMO_RECIPE = CONFIGS / "demo.yaml"

# The demo recipe made cheap: 32 px crops, no workers, progress read every step.
TINY = ["preprocess.resize=36", "preprocess.crop=32", "data.num_workers=0", "train.log_every=1"]

# The exact-resume runs: 24 training images (small_root) in batches of 3 are 8 steps an epoch; dropout and
# augmentation make every RNG draw count.
SETUP = [
    "train.epochs=2",
    "train.batch_size=3",
    "model.head.hidden=[16]",
    "model.head.dropout=0.3",
    "train.scheduler.name=cosine",
]


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """CPU only, one thread per process, unbuffered output, no user accelerate config, repo importable."""
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "1",
            "PYTHONUNBUFFERED": "1",
            "HF_HOME": str(tmp_path / "hf_home"),
            "PYTHONPATH": str(REPO),
        }
    )
    return env


def train_past_a_broken_image(train_inproc, small_root: Path, tmp_path: Path, *overrides: str):
    """A cifar_cnn run on a copy of small_root with one undecodable training JPEG, which it must skip and
    list alone in bad_files.txt while still validating all 12 images; returns (result, that file, the list)."""
    root = shutil.copytree(small_root, tmp_path / "data")
    bad = root / "train" / "2" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = train_inproc(
        f"data.root={root}", *overrides, "model.arch=cifar_cnn", "data.max_bad_fraction=0.05", "run.name=bad"
    )
    assert result.exit_code == 0
    listed = (result.run_dir / "bad_files.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(bad)]
    assert read_record(result.run_dir / "best").metrics["valid_n"] == 12
    return result, bad, listed
