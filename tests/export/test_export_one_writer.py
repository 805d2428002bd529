"""Hostile input round 2, export side: gates never pass on NaN, one export per --out, leftovers of an
interrupted export are cleared, and an export replaces the whole set of files it owns."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file

from core.lock import lock_path
from export import verify
from tests.export.export_helpers import run_export, save_tiny_bundle
from tests.train.helpers import REPO

CHEAP = ("--exporter", "torchscript", "--no-bench")


def _bundle(tmp_path):
    return save_tiny_bundle(tmp_path / "run" / "best", arch="cifar_cnn")


def test_m7_a_bundle_with_nan_weights_fails_the_gate_and_leaves_no_model(tmp_path, demo_root, capsys):
    bundle = _bundle(tmp_path)
    weights = load_file(str(bundle / "model.safetensors"))
    name = next(k for k in weights if k.endswith("bias"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(bundle / "model.safetensors"))
    out = tmp_path / "out"
    rc = run_export(bundle, "--images", demo_root / "valid", "--out", out, *CHEAP)
    assert rc != 0
    assert not (out / "model.onnx").exists()
    report = json.loads((out / "export_report.json").read_text())  # strict JSON: no NaN figures
    assert "bundle's weights are broken" in " ".join(report["parity"]["onnx"]["failures"])
    assert "NaN/Inf" in capsys.readouterr().err


def test_m7_every_gate_fails_on_a_non_finite_value_on_either_side():
    gate = verify.Gate(min_top1=0.0, max_dprob=1.0, max_acc_drop=100.0)
    ok = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    for ref, got in ((ok, ok.clone().fill_(float("nan"))), (ok.clone().fill_(float("inf")), ok)):
        parity = verify.compare(ref, got, ["a", "b"], [0, 1], ["x", "y"])
        assert verify.judge(parity, gate), "a gate passed with non-finite logits"
        json.dumps(parity, allow_nan=False)  # figures are None, never NaN
    assert verify.judge(verify.compare(ok, ok.clone(), ["a", "b"], [0, 1], ["x", "y"]), gate) == []


HOLDER = (
    "import sys, time; from pathlib import Path; from core.lock import OutputLock\n"
    "lock = OutputLock(Path(sys.argv[1]), 'export'); assert lock.acquire() is None\n"
    "print('held', flush=True); time.sleep(120)"
)


def test_m13_a_second_export_into_the_same_out_is_refused_naming_the_pid(tmp_path, demo_root, capsys):
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert p.stdout.readline().strip() == "held"
        rc = run_export(_bundle(tmp_path), "--images", demo_root / "valid", "--out", out, *CHEAP)
        assert rc == 2
        assert f"another export (pid {p.pid}" in capsys.readouterr().err
        assert not (out / "model.onnx").exists()
    finally:
        p.kill()
        p.wait(timeout=30)


def test_m16_work_folders_of_an_interrupted_export_are_removed_with_one_line(tmp_path, demo_root, capsys):
    out = tmp_path / "out"
    (out / ".export-work.abc123").mkdir(parents=True)
    (out / ".export-work.abc123" / "model.onnx").write_bytes(b"half")
    assert run_export(_bundle(tmp_path), "--images", demo_root / "valid", "--out", out, *CHEAP) == 0
    assert not list(out.glob(".export-work.*"))
    assert "removed 1 work folder(s) an interrupted export left" in capsys.readouterr().err
    assert not lock_path(out).exists()


def test_m17_an_export_removes_model_files_it_did_not_write_this_time(tmp_path, demo_root):
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("model.int8.onnx", "model.fp16.onnx", "model.engine", "model.engine.json"):
        (out / stale).write_bytes(b"from an earlier export")
    (out / "notes.txt").write_text("the user's own file")
    assert run_export(_bundle(tmp_path), "--images", demo_root / "valid", "--out", out, *CHEAP) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx", "notes.txt"]
