"""serve's progress in a batch log: plain lines at an interval, no bar frames."""

from __future__ import annotations

from tests.serve.helpers import serve


def test_without_a_terminal_progress_is_plain_lines(bundle, photos, tmp_path, capsys, monkeypatch):
    from serve import run as serve_run

    monkeypatch.setattr(serve_run, "SERVE_LOG_SECONDS", 0.0)  # a line after every batch
    assert serve(bundle, photos, "--out", tmp_path / "p.csv", "--workers", 0, "--batch-size", 2) == 0
    out = capsys.readouterr()
    assert "\r" not in out.out + out.err
    lines = [ln for ln in out.out.splitlines() if ln.startswith("classify  img ")]
    assert [ln.split("  ")[1] for ln in lines] == ["img 2", "img 4", "img 6"]
