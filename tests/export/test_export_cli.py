"""The export CLI: flags become one frozen, fully defaulted ExportJob, checked before torch is loaded."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest
import tomllib

from core.errors import UserError
from export.cli import CALIB_MAX, ExportJob, parse

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_filled_in_and_the_job_is_frozen():
    job = parse(["runs/r/best"])
    assert isinstance(job, ExportJob) and job.source == Path("runs/r/best") and job.out is None
    assert job.precisions == ("fp32",) and job.bench and not job.tensorrt and job.engine_from is None
    assert (job.calib_max, job.max_int8_drop, job.int8_activations, job.workspace_gb) == (
        CALIB_MAX,
        1.0,
        "uint8",
        4.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.max_batch = 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--opt-batch", "4"], "--opt-batch only apply with --tensorrt"),
        (["--calib-max", "8"], "--calib-max only apply with --precision ...,int8"),
        (["--verify-only", "--probs"], "drop --tensorrt/--probs"),
        (["--bundle", "b"], "--bundle only applies with --verify-only"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--precision", "int8", "--max-int8-drop", "-1"], "cannot be negative"),
        (["--tensorrt", "--max-batch", "8", "--opt-batch", "9"], "between 1 and --max-batch (8)"),
        (["--tensorrt", "--workspace-gb", "0"], "--workspace-gb must be above 0"),
        (["--precision", "fp64"], "unknown fp64"),
    ],
)
def test_a_bad_flag_combination_is_a_user_error(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse(["bundle", *argv])


def test_the_installed_command_is_the_export_entry():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, name = scripts["imgclf-export"].split(":")
    assert getattr(importlib.import_module(module), name).__wrapped__.__module__ == "export.main"
