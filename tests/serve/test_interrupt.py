"""Ctrl-C never hangs serve, and its decode workers never outlive it (SIGINT to the group, SIGTERM, kill -9)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.serve.helpers import exits_within, start_serve, wait_rows


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


EXIT_DEADLINE_S = 90

# more moments of the run in the slow set: the hang it fixes struck 8 times in 42
SLOW = pytest.mark.slow


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("after_rows", [3, pytest.param(1, marks=SLOW), pytest.param(12, marks=SLOW)])
def test_ctrl_c_to_the_process_group_exits_130_at_once_with_one_line(bundle, tmp_path, after_rows):
    out = tmp_path / "p.csv"
    proc = start_serve(bundle, tmp_path, out)
    wait_rows(proc, out, after_rows)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    # A hang never ends; a loaded 2-core box has taken 25 s to tear a Python process down, so the
    # deadline is far above that rather than close to it (a suite run failed once at 20 s).
    exits_within(proc, EXIT_DEADLINE_S, "Ctrl-C")
    err = proc.stderr.read().decode().strip().splitlines()
    assert proc.returncode == 130, err
    assert len(err) == 1 and err[0].startswith("interrupted") and "--resume" in err[0], err
    assert workers and not _left_alive(workers)


def _left_alive(pids: list[int], within_s: float = 15.0) -> list[int]:
    """The pids still running after up to within_s: a SIGKILL the kernel sends as the parent exits lands at
    once, but on a loaded machine the killed process can take a moment to be scheduled and reaped."""
    deadline = time.monotonic() + within_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=SLOW)])
def test_decode_workers_die_with_their_parent(bundle, tmp_path, sig):
    out = tmp_path / "p.csv"
    proc = start_serve(bundle, tmp_path, out)
    wait_rows(proc, out, 2)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the two decode processes (plus any helper the pool starts)
    proc.send_signal(sig)
    proc.wait(timeout=EXIT_DEADLINE_S)
    left = _left_alive(workers)
    for w in left:  # never leave them behind, even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not left


def _sigint_in(pid: int, field: str) -> bool:
    """Whether SIGINT's bit is set in a signal mask of /proc/<pid>/status (SigIgn, SigPnd, ShdPnd)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_ignore_sigint_and_keep_working():
    from serve.workers import DecodeWorkers

    # fork passes our SIGINT disposition on: make it the default, so a background run (SIGINT ignored)
    # cannot hand the worker an ignore that init_worker failed to set
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        pool = DecodeWorkers(1)
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        (pid,) = pool.pids()
        assert _sigint_in(pid, "SigIgn")
        os.kill(pid, signal.SIGINT)
        # poll until the kernel has delivered it (no longer pending), not a fixed sleep
        deadline = time.monotonic() + 30
        while any(_sigint_in(pid, f) for f in ("SigPnd", "ShdPnd")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.submit(sum, [1, 2]).result(timeout=10) == 3 and _alive(pid)
    finally:
        pool.close()


def test_abort_does_not_wait_for_queued_or_running_work():
    from serve.workers import DecodeWorkers

    pool = DecodeWorkers(2)
    pids = pool.pids()
    futures = [pool.submit(time.sleep, 30) for _ in range(6)]
    # poll until both workers hold a task (running, the rest queued), not a fixed sleep
    deadline = time.monotonic() + 30
    while not all(f.running() for f in futures[:2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(f.running() for f in futures[:2])
    start = time.monotonic()
    pool.close(abort=True)
    assert time.monotonic() - start < 20  # waiting for the work would take 30 s or more; slack for a busy box
    assert not _left_alive(pids)
    assert all(f.cancelled() or f.done() for f in futures[2:])
