"""M24: a full disk during export names the artifact as it would sit in --out, never the private
.export-work.* folder it was written in, and says the fix (free space, or another --out)."""

from __future__ import annotations

import errno
from pathlib import Path

from tests.export.export_helpers import run_export


def _full(name: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", *([name] if name else []))


def _export_full(make_bundle, tmp_path, monkeypatch, capsys, raise_it) -> tuple[Path, str]:
    import export.onnx_export as onnx_export

    monkeypatch.setitem(onnx_export.EXPORTERS, "dynamo", raise_it)
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--out", out, "--no-bench") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return out, err.strip().splitlines()[-1]


def test_m24_export_disk_full_names_the_artifact_in_out_not_the_work_folder(
    make_bundle, tmp_path, monkeypatch, capsys
):
    def full(graph, example, dest, opset, outputs):
        raise _full(str(dest))  # dest lies in the private .export-work.* folder

    out, line = _export_full(make_bundle, tmp_path, monkeypatch, capsys, full)
    assert ".export-work" not in line, line
    assert f"writing {out / 'model.onnx'} " in line, line
    assert "free space" in line and "--out" in line, line
    assert not list(out.glob(".export-work*")) and not list(out.glob("*.onnx"))


def test_m24_export_disk_full_without_a_file_name_names_the_out_folder(
    make_bundle, tmp_path, monkeypatch, capsys
):
    def full(graph, example, dest, opset, outputs):  # C writers often keep only the message
        raise RuntimeError("write failed: No space left on device")

    out, line = _export_full(make_bundle, tmp_path, monkeypatch, capsys, full)
    assert str(out) in line and ".export-work" not in line, line
    assert "free space" in line and "--out" in line, line
