"""M24: a full disk while serve writes rows is one line naming the file, exit 2; rows already written stay."""

from __future__ import annotations

import errno

import pytest

from serve import writer
from tests.serve.helpers import read_rows, save_picture, serve


def test_m24_serve_disk_full_is_one_line_and_keeps_written_rows(bundle, tmp_path, monkeypatch, capsys):
    images = tmp_path / "imgs"
    for i in range(6):
        save_picture(images / f"{i:02d}.png", seed=i, size=(24, 20))
    out = tmp_path / "preds.csv"
    real_open = open

    class FullDisk:  # the file system takes the header and two batches, then refuses, as a full disk does
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, text):
            self.writes += 1
            if self.writes > 3:
                self.fh.write(text[: len(text) // 2])  # a torn line reaches the file before the error
                self.fh.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(writer, "open", lambda *a, **k: FullDisk(real_open(*a, **k)), raising=False)
    with pytest.raises(SystemExit) as exc:
        serve(bundle, images, "--out", out, "--batch-size", 2, "--workers", 0, "--no-progress")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: disk full writing ") and str(out) in err[0], err
    assert "Traceback" not in "\n".join(err)
    rows = read_rows(out)  # whole lines only: the file is a valid resume point
    assert len(rows) == 4 and out.read_text().endswith("\n")
