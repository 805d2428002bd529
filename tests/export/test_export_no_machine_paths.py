"""M20: shipped files carry no path of the machine that built them, and the bundle is still found."""

from __future__ import annotations

import json
import shutil

from core.model_record import bundle_near, onnx_metadata, read_onnx_record
from tests.export.export_helpers import run_export, save_tiny_bundle


def test_m20_model_onnx_records_the_run_and_bundle_names_not_a_path(tmp_path, demo_root):
    home = tmp_path / "home" / "alice" / "runs" / "flowers"
    bundle = save_tiny_bundle(home / "best", arch="cifar_cnn")
    assert run_export(bundle, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench") == 0
    onnx_path = home / "export" / "model.onnx"
    text = json.dumps(onnx_metadata(onnx_path))
    assert "alice" not in text and str(tmp_path) not in text
    _, facts = read_onnx_record(onnx_path)
    assert (facts["run"], facts["bundle"]) == ("flowers", "best")
    assert bundle_near(onnx_path, facts) == bundle.resolve()


def test_m20_verify_only_finds_the_bundle_beside_a_moved_run(tmp_path, demo_root):
    first = tmp_path / "machine_a" / "runs" / "r"
    bundle = save_tiny_bundle(first / "best", arch="cifar_cnn")
    run_export(bundle, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench")
    moved = tmp_path / "machine_b" / "r"
    shutil.copytree(first, moved)
    shutil.rmtree(tmp_path / "machine_a")
    onnx_path = moved / "export" / "model.onnx"
    assert run_export(onnx_path, "--verify-only", "--images", demo_root / "valid", "--no-bench") == 0


def test_m20_an_export_alone_asks_for_the_bundle_by_name(tmp_path, demo_root, capsys):
    run = tmp_path / "runs" / "r"
    bundle = save_tiny_bundle(run / "best", arch="cifar_cnn")
    run_export(bundle, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench")
    alone = tmp_path / "shipped" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(run / "export" / "model.onnx", alone)
    capsys.readouterr()
    assert run_export(alone, "--verify-only", "--images", demo_root / "valid", "--no-bench") == 2
    err = capsys.readouterr().err
    assert "run r, best/" in err and "--bundle" in err
