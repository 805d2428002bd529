"""What a new user gives serve as its model, and --show on an image it cannot fetch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve.helpers import REPO, export_onnx, read_rows, same_predictions, save_picture, serve
from tests.serve.test_cli import http_root  # noqa: F401 - the fixture
from tests.test_fast_help import imported_heavy


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize("name", ["model.safetensors", "bundle.json"])
def test_a_file_of_the_bundle_serves_as_its_bundle(bundle, photos, tmp_path, name):
    serve(bundle, photos, "--out", tmp_path / "folder.csv", "--workers", 0, "--device", "cpu")
    assert (
        serve(bundle / name, photos, "--out", tmp_path / "file.csv", "--workers", 0, "--device", "cpu") == 0
    )
    same_predictions(read_rows(tmp_path / "folder.csv"), read_rows(tmp_path / "file.csv"), tol=0)


def test_resuming_with_the_weights_file_is_the_same_job_as_the_folder(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--workers", 0, "--limit", 2, "--device", "cpu")
    serve(bundle / "model.safetensors", photos, "--out", out, "--workers", 0, "--resume", "--device", "cpu")
    assert len(read_rows(out)) == 6


def test_an_export_folder_points_at_the_model_file_inside_it(bundle, photos, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    export_onnx(bundle, export / "model.onnx")
    shutil.copy(export / "model.onnx", export / "model.int8.onnx")
    with pytest.raises(SystemExit) as exc:
        serve(export, photos, "--out", tmp_path / "p.csv")
    assert exc.value.code == 2 and not (tmp_path / "p.csv").exists()
    line = _one_error_line(capsys)
    assert f"use {export / 'model.onnx'}" in line and "model.int8.onnx" in line


def test_a_folder_that_is_no_model_says_what_a_bundle_is(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        serve(photos, photos, "--out", tmp_path / "p.csv")
    assert exc.value.code == 2 and "not a model bundle" in _one_error_line(capsys)


def test_show_on_an_unreachable_url_exits_2_with_one_line(bundle, http_root, tmp_path, capsys):  # noqa: F811
    _, base = http_root
    figure = tmp_path / "fig.png"
    with pytest.raises(SystemExit) as exc:
        serve(bundle, f"{base}/missing.jpg", "--show", "--figure", figure)
    assert exc.value.code == 2 and not figure.exists()
    line = _one_error_line(capsys)
    assert f"{base}/missing.jpg" in line and "HTTP 404" in line


def test_show_of_a_broken_file_exits_2_and_keeps_its_error_row(bundle, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit) as exc:
        serve(bundle, broken, "--show", "--out", out)
    assert exc.value.code == 2 and f"{broken}: " in _one_error_line(capsys)  # the path as given
    assert [r["status"] for r in read_rows(out)] == ["error"]


def test_a_flag_mistake_is_refused_before_torch_is_imported(bundle, tmp_path):
    image = save_picture(tmp_path / "a.jpg")
    proc, heavy = imported_heavy(
        ["-m", "serve.main", str(bundle), str(image), "--out", "p.csv", "--topk", "0"]
    )
    assert proc.returncode == 2 and "--topk must be positive" in proc.stderr
    assert not heavy, heavy


def test_the_imgclf_serve_console_script_is_serve_mains_entry():
    import importlib

    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["imgclf-serve"].partition(":")
    from serve.main import main

    assert getattr(importlib.import_module(module), name) is main


def test_the_command_line_becomes_a_frozen_job_with_its_defaults_resolved(bundle, photos, tmp_path):
    import dataclasses

    from serve.cli import parse

    out = tmp_path / "p.jsonl"
    job = parse(
        [str(bundle / "bundle.json"), str(photos), "--out", str(out), "--evaluate", "--providers", ""]
    )
    assert (job.model, job.inputs, job.fmt, job.probs) == (bundle, (str(photos),), "jsonl", True)
    assert job.eval_dir == tmp_path / "p_eval" and job.figure is None and job.max_bytes == 256 * 2**20
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.topk = 3
    shown = parse([str(bundle), str(photos / "1" / "img_0.jpg"), "--show"])
    assert shown.figure == Path("img_0_topk.png") and shown.out is None  # beside where serve runs
