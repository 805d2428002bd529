"""M24: a full disk during export is one line naming the file (not the exporter), exit 2, no model file."""

from __future__ import annotations

import errno

from tests.export.export_helpers import run_export


def test_m24_export_disk_full_names_the_file_not_the_exporter(make_bundle, tmp_path, monkeypatch, capsys):
    import export.onnx_export as onnx_export

    def full(graph, example, dest, opset, outputs):
        # torch's writer wraps the OS error into its own exception and keeps only the message
        raise RuntimeError(f"[enforce fail] write failed: No space left on device ({dest})")

    monkeypatch.setitem(onnx_export.EXPORTERS, "dynamo", full)
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--out", out, "--no-bench") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: disk full writing "), lines  # before it: the random-images warning
    assert "model.onnx" in lines[-1] and "exporter" not in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert not list(out.glob("*.onnx")) if out.exists() else True


def test_m24_disk_full_oserror_anywhere_is_one_line(tmp_path, capsys):
    from core.errors import cli_entry

    @cli_entry
    def main():
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "x.json"))

    try:
        main()
    except SystemExit as exc:
        assert exc.code == 2
    assert capsys.readouterr().err.startswith(f"error: disk full writing {tmp_path / 'x.json'}")
