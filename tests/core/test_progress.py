"""core.progress: plain lines for batch logs, a bar with current numbers on a terminal."""

from __future__ import annotations

import io

from core import progress
from core.progress import Progress, hms


def test_without_a_terminal_each_report_is_one_plain_line_and_nothing_else():
    out = io.StringIO()
    with Progress(6, "epoch 1/2", stream=out) as bar:
        for step in range(6):
            bar.update()
            if (step + 1) % 4 == 0 or step == 5:
                bar.report({"loss": "0.5000", "acc": "0.750", "img/s": "12", "lr": "1.00e-03"})
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2  step 4/6  loss 0.5000  acc 0.750  img/s 12  lr 1.00e-03  eta ")
    assert lines[1].startswith("epoch 1/2  step 6/6  ") and lines[1].endswith("eta 0:00:00")


def test_the_run_eta_adds_the_work_after_this_bar():
    out = io.StringIO()
    bar = Progress(4, "epoch 1/3", stream=out)
    bar.update(4)
    bar.later_seconds = 125.0
    bar.report({"loss": "1.0"})
    assert out.getvalue().rstrip().endswith("eta 0:00:00 (run 0:02:05)")


def test_time_driven_lines_come_once_per_interval(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = Progress(None, "classify", unit="img", seconds=30, stream=out)
    for t in (10, 20, 31, 40, 62):  # lines at 31 s and at 62 s (31 s after the first line)
        now[0] = float(t)
        bar.update(32)
    assert out.getvalue().splitlines() == ["classify  img 96  3.1 img/s", "classify  img 160  2.6 img/s"]


def test_on_a_terminal_the_bar_shows_the_latest_report_not_the_first():
    out = io.StringIO()
    bar = Progress(6, "epoch 1/1", stream=out, tty=True)
    for step in range(6):
        bar.update()
        bar.report({"loss": f"{1.0 / (step + 1):.4f}"})
    assert "loss 0.1667" in out.getvalue().split("\r")[-1]
    bar.close()


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = Progress(3, "x", stream=out, enabled=False, seconds=0)
    bar.update(3)
    bar.report({"loss": "1"})
    assert out.getvalue() == ""


def test_hms():
    assert hms(3725) == "1:02:05" and hms(float("nan")) == "?"
