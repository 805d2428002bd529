"""tools/gpu_check.py --smoke: every step of the GPU check runs at tiny sizes on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    """tools/gpu_check.py as a module (it imports its sibling, as `python tools/gpu_check.py` would)."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import importlib

    import gpu_check

    return importlib.reload(gpu_check)


def test_only_tensorrt_and_onnxruntime_cuda_skips_are_allowed_on_a_gpu(gpu_check, tmp_path, monkeypatch):
    check = gpu_check.Check(tmp_path, smoke=False, cuda=True)
    text = (
        "SKIPPED [3] tests/export/test_export_tensorrt.py:180: tensorrt not installed\n"
        "SKIPPED [1] tests/serve/test_backends.py:259: onnxruntime here is the CPU-only wheel\n"
        "14 passed, 4 skipped, 400 deselected in 60.1s"
    )
    monkeypatch.setattr(check, "py", lambda *a, **k: text)
    assert gpu_check.step_pytest_gpu(check) == {"passed": 14, "skipped": 4, "deselected": 400}
    bad = "SKIPPED [1] tests/core/test_jpeg.py:240: needs CUDA (no GPU on this machine)\n" + text
    monkeypatch.setattr(check, "py", lambda *a, **k: bad)
    with pytest.raises(gpu_check.StepFailed, match="1 gpu test.*skipped on a GPU machine.*test_jpeg"):
        gpu_check.step_pytest_gpu(check)


def test_without_a_gpu_the_gpu_tests_step_is_skipped_never_passed(gpu_check, tmp_path, monkeypatch):
    check = gpu_check.Check(tmp_path, smoke=True, cuda=False)
    monkeypatch.setattr(check, "py", lambda *a, **k: "18 skipped, 400 deselected in 3.0s")
    with pytest.raises(gpu_check.StepSkipped, match="no CUDA device"):
        gpu_check.step_pytest_gpu(check)


def test_missing_pytest_is_a_loud_skip_the_next_steps_run_and_the_summary_follows_each_step(
    gpu_check, tmp_path, monkeypatch, capsys
):
    real = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda name, *a: None if name == "pytest" else real(name, *a)
    )
    check = gpu_check.Check(tmp_path, smoke=False, cuda=True)
    plan = [
        gpu_check.Step("pytest_gpu", 10, gpu_check.step_pytest_gpu),
        gpu_check.Step("next", 10, lambda c: {"x": 1}),
    ]
    seen = []
    outcomes = gpu_check.run_steps(check, plan, 60, after=lambda o: seen.append([x.status for x in o]))
    assert [o.status for o in outcomes] == ["skipped", "pass"]
    assert seen == [["skipped"], ["skipped", "pass"]]  # summary.json is rewritten after every step
    out = capsys.readouterr().out
    assert "!!! PYTEST IS NOT INSTALLED" in out and "skipped  pytest_gpu" in out  # printed as each step ends


def test_serving_agreement_below_99_percent_fails_the_step(gpu_check, tmp_path, monkeypatch):
    check = gpu_check.Check(tmp_path, smoke=False, cuda=True)
    monkeypatch.setattr(check, "py", lambda *a, **k: "")
    rows = {f"{k}.jpg": "a" for k in range(100)}
    other = {**rows, "0.jpg": "b", "1.jpg": "b"}  # 98 % agreement
    monkeypatch.setattr(gpu_check, "_labels", lambda path: other if "cuda" in path.name else rows)
    with pytest.raises(gpu_check.StepFailed, match="98.0% of top-1 labels < 99%"):
        gpu_check.step_serve_agreement(check)
    monkeypatch.setattr(gpu_check, "_labels", lambda path: rows)
    assert gpu_check.step_serve_agreement(check)["top1_agreement_gpu_vs_cpu"] == 1.0


def test_speed_targets_are_met_or_missed_apart_from_pass_or_fail(gpu_check, tmp_path):
    import gpu_check_summary as gs

    figures = {"train_bench_resnet50": {"resnet50": {"rows": [{"path": "gpu", "images_per_s": 6000.0}]}}}
    figures["serve_bench"] = {"images_per_s": {"end_to_end": 7000.0}}
    targets = gs.check_targets(figures)
    assert targets["train resnet50 GPU feed img/s >= 5000"] == {"value": 6000.0, "met": True}
    assert targets["serve resnet50 end-to-end img/s >= 8000"]["met"] is False
    assert targets["train resnet50 gpu/model >= 0.9"]["met"] is None  # not measured
    summary = {"ok": True, "total_s": 400.0, "steps": [{"status": "pass"}] * 2, "targets": targets}
    line = gs.last_line(summary, tmp_path)
    assert line.startswith("gpu_check: OK in 400.0 s (2 pass); speed targets: 1 met, 1 missed, ")


def test_the_compile_step_runs_only_when_named_and_the_limits_fit_480_s(gpu_check, tmp_path, capsys):
    import gpu_check_summary as gs

    plan = gpu_check.steps(gpu_check.Check(tmp_path, smoke=False, cuda=True))
    default = gs.select(plan, None)
    assert "train_bench_compile" not in [s.name for s in default]
    assert sum(s.limit_s for s in default) <= gs.DEFAULT_BUDGET_S == 480
    assert [s.name for s in gs.select(plan, "train_bench_compile")] == ["train_bench_compile"]
    compile_args = gpu_check.GPU.compile_args
    assert {"--compile", "--amp", "--channels-last"} <= set(compile_args)
    with pytest.raises(SystemExit) as exc:
        gs.select(plan, "nope")
    assert exc.value.code == 2 and "unknown step(s) nope" in capsys.readouterr().err


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
        "pytest_gpu": "skipped",  # no CUDA: the gpu tests prove nothing here, so never `pass`
        "decode": "pass",
        "train_bench_resnet50": "pass",
        "train_bench_densenet": "skipped",
        "serve_bench": "pass",
        "train_2_epochs": "pass",
        "serve_gpu_vs_cpu": "pass",
        "export": "pass",
    }
    assert "train_bench_compile" not in statuses  # optional: only when --only names it
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: OK") and "speed targets: not checked (smoke run)" in last
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["decode"]["figures"]["444"]["max_abs_diff"] <= 1  # CPU decoders agree on 4:4:4
    assert steps["train_2_epochs"]["figures"]["classes"] == 4
    assert steps["export"]["figures"]["onnx_vs_torch_top1"] == 1.0
    assert all((out / s["log"]).is_file() for s in summary["steps"] if s["status"] != "skipped")
