"""Resume: a killed run continued with --resume equals an uninterrupted one; torn lines and parts handled."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from serve.writer import Layout, RowWriter, existing_parts, merge_parts, ok_row, part_path, repair_tail
from tests.serve.helpers import SERVE, read_rows, same_predictions, save_picture, serve, subprocess_env

LAYOUT = Layout(("1", "2"), ("one", "two"))


def _rows_in(path) -> int:
    return max(0, path.read_text().count("\n") - 1) if path.exists() else 0


@pytest.mark.slow
def test_resume_after_a_real_kill_equals_an_uninterrupted_run(bundle, tmp_path):
    images = tmp_path / "many"
    for i in range(40):
        save_picture(images / f"{i // 10}" / f"{i:03d}.png", seed=i, size=(24, 20))
    out, ref = tmp_path / "killed.csv", tmp_path / "ref.csv"
    args = [bundle, images, "--out", out, "--batch-size", 1, "--workers", 0, "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, str(SERVE), *map(str, args), "--throttle", "0.1"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _rows_in(out) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 4 <= _rows_in(out) < 40, proc.stderr.read().decode()[-2000:]
    assert serve(*args, "--resume") == 0
    assert serve(bundle, images, "--out", ref, "--batch-size", 1, "--workers", 0, "--no-progress") == 0
    resumed = read_rows(out)
    assert len({r["path"] for r in resumed}) == len(resumed) == 40
    same_predictions(sorted(resumed, key=lambda r: r["path"]), read_rows(ref))


def test_resume_cuts_a_torn_last_line_and_redoes_that_image(bundle, photos, tmp_path):
    out, ref = tmp_path / "p.csv", tmp_path / "ref.csv"
    serve(bundle, photos, "--out", ref, "--workers", 0)
    text = ref.read_text()
    out.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 12])  # kill inside the last row's write
    shutil.copy(tmp_path / "ref.csv.meta.json", tmp_path / "p.csv.meta.json")  # the same job's record
    serve(bundle, photos, "--out", out, "--resume", "--workers", 0)
    assert out.read_text() == text


def test_resume_refuses_a_file_with_other_columns(bundle, photos, tmp_path, capsys):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--workers", 0, "--limit", 2)
    header, rest = out.read_text().split("\n", 1)
    out.write_text(header.replace(",prob,", ",probability,") + "\n" + rest)  # a hand-edited file
    before = out.read_text()
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", out, "--resume")
    assert exc.value.code == 2 and "different columns" in capsys.readouterr().err
    assert out.read_text() == before


def test_repair_tail_keeps_whole_lines_only(tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(b"a,b\n1,2\n3,")
    assert repair_tail(f) == 2 and f.read_bytes() == b"a,b\n1,2\n"
    assert repair_tail(f) == 0


def test_parts_merge_in_stream_order_and_disappear(tmp_path):
    out = tmp_path / "p.csv"
    for rank in (0, 1):
        with RowWriter(part_path(out, rank), LAYOUT, seq=True) as w:
            w.write(
                [{**ok_row(LAYOUT, f"img{seq}.jpg", _probs(seq)), "seq": seq} for seq in range(rank, 7, 2)]
            )
    assert merge_parts(out, LAYOUT, existing_parts(out), append=False) == 7
    assert [r["path"] for r in read_rows(out)] == [f"img{i}.jpg" for i in range(7)]
    assert existing_parts(out) == []


def _probs(seed: int):
    import numpy as np

    p = np.random.default_rng(seed).random(2)
    return p / p.sum()


def test_resume_folds_the_parts_of_a_killed_multi_process_run(bundle, photos, tmp_path):
    out, ref = tmp_path / "p.csv", tmp_path / "ref.csv"
    serve(bundle, photos, "--out", ref, "--workers", 0)
    layout = Layout(("1", "2", "3", "4"), ("circle", "square", "triangle", "cross"))
    finished = read_rows(ref)[:2]  # what rank 0 had written to its part file before the kill
    with RowWriter(part_path(out, 0), layout, seq=True) as w:
        w.write([{**r, "seq": i} for i, r in enumerate(finished)])
    shutil.copy(tmp_path / "ref.csv.meta.json", tmp_path / "p.csv.meta.json")  # written before any row
    serve(bundle, photos, "--out", out, "--resume", "--workers", 0)
    assert read_rows(out) == read_rows(ref) and existing_parts(out) == []
