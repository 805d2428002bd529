"""Shared constants and subprocess helpers for the training tests."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "train" / "main.py"
CONFIGS = REPO / "configs"
DEMO_RECIPE = CONFIGS / "demo.yaml"

# The demo recipe made cheap: 32 px crops, no workers, progress read every step.
TINY = ["preprocess.resize=36", "preprocess.crop=32", "data.num_workers=0", "train.log_every=1"]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]
