"""Mistakes a user can fix: one `error:` line, exit 2, and no model.onnx (or any partial file) left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.bundle import WEIGHTS_FILE
from tests.export.export_helpers import edit_record, run_export, save_tiny_bundle

REPO = Path(__file__).resolve().parents[2]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _not_a_bundle(tmp_path, make_bundle):
    (tmp_path / "empty").mkdir()
    return [tmp_path / "empty"], "is not a model bundle"


def _newer_schema(tmp_path, make_bundle):
    bundle = make_bundle(arch="cifar_cnn")
    edit_record(bundle, schema_version=99)
    return [bundle], "newer than this imgclf supports"


def _corrupt_weights(tmp_path, make_bundle):
    bundle = make_bundle(arch="cifar_cnn")
    (bundle / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    return [bundle], "is corrupt or unreadable"


def _unwritable_out(tmp_path, make_bundle):
    (tmp_path / "a_file").write_text("x")  # a folder cannot be made under a file, even by root
    argv = [make_bundle(arch="cifar_cnn"), "--out", tmp_path / "a_file" / "export"]
    return argv, "cannot write to output folder"


def _onnx_without_verify_only(tmp_path, make_bundle):
    (tmp_path / "given.onnx").write_bytes(b"")
    return [tmp_path / "given.onnx"], "use --verify-only"


def _trt_flag_without_tensorrt(tmp_path, make_bundle):
    return [
        make_bundle(arch="cifar_cnn"),
        "--engine-from",
        "int8",
    ], "--engine-from only apply with --tensorrt"


def _opt_batch_above_max(tmp_path, make_bundle):
    argv = [make_bundle(arch="cifar_cnn"), "--tensorrt", "--max-batch", 8, "--opt-batch", 16]
    return argv, "--opt-batch must be between 1 and --max-batch (8)"


def _unknown_precision(tmp_path, make_bundle):
    return [
        make_bundle(arch="cifar_cnn"),
        "--precision",
        "fp32,fp8",
    ], "valid: a comma list of fp32, fp16, int8"


def _calibration_without_int8(tmp_path, make_bundle):
    argv = [make_bundle(arch="cifar_cnn"), "--precision", "fp16", "--calib-images", tmp_path]
    return argv, "--calib-images only apply with --precision ...,int8"


def _int8_without_calibration_images(tmp_path, make_bundle):
    return [make_bundle(arch="cifar_cnn"), "--precision", "int8"], "needs calibration images"


def _crop_zero(tmp_path, make_bundle):
    bundle = make_bundle(arch="cifar_cnn")
    edit_record(
        bundle,
        preprocess={
            "resize": 36,
            "crop": 0,
            "interpolation": "bilinear",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    )
    return [bundle], "bundle.json has invalid preprocessing: crop 0 (must be at least 1)"


BAD_INPUTS = [
    _not_a_bundle,
    _newer_schema,
    _corrupt_weights,
    _unwritable_out,
    _onnx_without_verify_only,
    _trt_flag_without_tensorrt,
    _opt_batch_above_max,
    _unknown_precision,
    _calibration_without_int8,
    _int8_without_calibration_images,
    _crop_zero,
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_exits_2_with_one_line_and_no_model_file(case, tmp_path, make_bundle, capsys):
    argv, message = case(tmp_path, make_bundle)
    assert run_export(*argv, "--exporter", "torchscript", "--no-bench") == 2
    assert message in _one_error_line(capsys)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("model.onnx", ".model.onnx"))]


def test_missing_tensorrt_says_how_to_install_it_before_any_export(
    make_bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails even where installed
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--tensorrt", "--out", out) == 2
    assert "pip install '.[gpu]'" in _one_error_line(capsys)
    assert not out.exists()


def test_verify_only_refuses_a_bundle_with_other_weights(cnn_export, tmp_path, capsys):
    other = save_tiny_bundle(tmp_path / "other", arch="cifar_cnn", seed=1)
    assert run_export(cnn_export["onnx"], "--verify-only", "--bundle", other, "--out", tmp_path) == 2
    assert "sha256 differs" in _one_error_line(capsys)


def test_verify_only_asks_for_bundle_when_the_recorded_one_is_gone(tmp_path, capsys):
    bundle = save_tiny_bundle(tmp_path / "run" / "best", arch="cifar_cnn")
    assert run_export(bundle, "--exporter", "torchscript", "--no-bench", "--out", tmp_path / "dist") == 0
    shutil.rmtree(bundle)
    capsys.readouterr()
    assert run_export(tmp_path / "dist" / "model.onnx", "--verify-only") == 2
    assert "pass it with --bundle DIR" in _one_error_line(capsys)


def test_the_script_runs_from_any_directory_and_fails_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "export" / "main.py"), str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        # the package as pip install -e . provides it; PYTHONPATH makes that this checkout
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a model bundle: no bundle.json (a bundle is a folder with bundle.json "
        "and model.safetensors, e.g. runs/<name>/best)"
    ]


def test_verify_only_names_a_missing_bundle_given_with_the_flag(cnn_export, tmp_path, capsys):
    missing = tmp_path / "no_such_bundle"
    assert run_export(cnn_export["onnx"], "--verify-only", "--bundle", missing, "--out", tmp_path) == 2
    line = _one_error_line(capsys)
    assert f"--bundle {missing} not found" in line and "not on this machine" not in line


def test_ctrl_c_during_export_is_one_line_exit_130_and_no_model_file(
    make_bundle, tmp_path, monkeypatch, capsys
):
    from export import onnx_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_onnx", interrupted)
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--out", out, "--no-bench") == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("interrupted: nothing was written")
    assert not out.exists()


@pytest.mark.parametrize("exporter,opset", [("dynamo", 5), ("dynamo", 99), ("torchscript", 99)])
def test_an_opset_the_exporter_cannot_produce_is_one_line_before_any_work(
    exporter, opset, make_bundle, tmp_path, capsys
):
    out = tmp_path / "out"
    assert (
        run_export(
            make_bundle(arch="cifar_cnn"),
            "--exporter",
            exporter,
            "--opset",
            opset,
            "--out",
            out,
            "--no-bench",
        )
        == 2
    )
    line = _one_error_line(capsys)  # no library traceback or version-converter warning before it
    assert f"--opset {opset} is outside what the {exporter} exporter can produce" in line
    assert not out.exists()  # a failed export leaves no empty --out folder behind


def test_the_dynamo_exporter_without_onnxscript_is_one_line_naming_the_fix(
    make_bundle, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` fails, as on the GPU machine
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--out", out, "--no-bench") == 2
    assert _one_error_line(capsys) == (
        "error: the dynamo ONNX exporter needs onnxscript, which is not installed: "
        "pip install onnxscript, or use --exporter torchscript"
    )
    assert not out.exists()


def test_a_path_to_the_weights_file_exports_its_bundle_folder(tmp_path, capsys):
    bundle = save_tiny_bundle(tmp_path / "run" / "best", arch="cifar_cnn")
    assert run_export(bundle / WEIGHTS_FILE, "--exporter", "torchscript", "--no-bench") == 0
    assert (tmp_path / "run" / "export" / "model.onnx").is_file()
    assert not (bundle / "export").exists() and sorted(p.name for p in bundle.iterdir()) == [
        "bundle.json",
        "model.safetensors",
    ]
    assert f"bundle: {bundle} (the folder of model.safetensors)" in capsys.readouterr().err
