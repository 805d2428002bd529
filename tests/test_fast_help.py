"""`--help`, `python -m core.config` and config mistakes answer without importing torch (it costs seconds).

Checked by what is imported (`python -X importtime` lists every module), not by timing: the
commands run exactly as a user types them, in a fresh interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "accelerate", "onnx", "onnxruntime", "tensorrt", "timm")


def imported_heavy(args: list[str]) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = {m.group(1) for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", proc.stderr, re.M)}
    return proc, names & set(HEAVY)


@pytest.mark.parametrize(
    "command",
    [
        ["train/main.py", "--help"],
        ["export/main.py", "--help"],
        ["serve/main.py", "--help"],
        ["train/split.py", "--help"],
        ["train/demo_data.py", "--help"],
        ["-m", "core.config"],
        ["-m", "core.config", "--markdown"],
    ],
)
def test_help_and_config_reference_import_no_heavy_library(command):
    proc, heavy = imported_heavy(command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    assert not heavy, f"{' '.join(command)} imported {sorted(heavy)}"


def test_config_markdown_is_the_readme_table():
    from core.config_reference import reference_markdown

    proc, _ = imported_heavy(["-m", "core.config", "--markdown"])
    assert proc.stdout.strip() == reference_markdown()


@pytest.mark.parametrize(
    "override",
    [
        "model.head.dropout=1.5",
        "train.optimizer.lr=-1",
        "augment.hflip=2",
        "preprocess.crop=0",
        "augment.scale=[1.0,0.5]",
        "data.num_workers=-1",
    ],
)
def test_config_value_out_of_range_is_one_line_exit_2_before_torch(override):
    proc, heavy = imported_heavy(["train/main.py", override])
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2
    assert len(errors) == 1 and errors[0].startswith(f"error: config key '{override.split('=')[0]}'"), errors
    assert not heavy, heavy


def test_option_names_copied_for_a_light_help_match_the_heavy_modules():
    import export.cli as export_cli
    from core.bundle import RECORD_FILE, WEIGHTS_FILE
    from export import onnx_export, verify
    from serve.model_file import BUNDLE_FILES

    assert BUNDLE_FILES == (RECORD_FILE, WEIGHTS_FILE)
    assert tuple(onnx_export.EXPORTERS) == export_cli.EXPORTERS
    assert (export_cli.DEFAULT_EXPORTER, export_cli.OPSET) == (
        onnx_export.DEFAULT_EXPORTER,
        onnx_export.OPSET,
    )
    assert tuple(verify.PROVIDERS) == export_cli.PROVIDERS and tuple(verify.GATES) == export_cli.PRECISIONS
