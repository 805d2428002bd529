"""tools/gpu_check.py --smoke: every step of the GPU check runs at tiny sizes on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_passes_every_step_and_writes_its_summary(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "gpu_check.py"),
            "--smoke",
            "--out",
            str(out),
            "--budget",
            "420",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert proc.returncode == 0 and summary["ok"], proc.stdout + proc.stderr
    assert statuses == {
        "env": "pass",
        "pytest_gpu": "pass",
        "decode": "pass",
        "train_bench_resnet50": "pass",
        "train_bench_densenet": "skipped",
        "serve_bench": "pass",
        "train_2_epochs": "pass",
        "serve_gpu_vs_cpu": "pass",
        "export": "pass",
    }
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["decode"]["figures"]["444"]["max_abs_diff"] <= 1  # CPU decoders agree on 4:4:4
    assert steps["train_2_epochs"]["figures"]["classes"] == 4
    assert steps["export"]["figures"]["onnx_vs_torch_top1"] == 1.0
    assert all((out / s["log"]).is_file() for s in summary["steps"] if s["status"] != "skipped")
