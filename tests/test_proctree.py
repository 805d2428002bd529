"""The deadline helper of the multi-process tests: a hung tree fails fast with its output and leaves nothing."""

from __future__ import annotations

import os
import re
import sys
import time

import pytest

from tests.proctree import _stat, run_tree

# A parent that starts a child in a session of its own (as torchrun starts its workers), says so, and hangs.
HANG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(f"child {child.pid}", flush=True)
time.sleep(600)
"""


def test_a_hung_tree_fails_at_its_deadline_showing_its_output_and_every_process_is_killed():
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"(?s)still running after 3 s.*child \d+") as failure:
        run_tree([sys.executable, "-c", HANG], timeout=3)
    assert time.monotonic() - start < 30
    child = int(re.search(r"child (\d+)", str(failure.value)).group(1))
    assert _gone(child, within_s=30)


def _gone(pid: int, within_s: float) -> bool:
    """Gone (or a zombie awaiting its reaper) within within_s: polled, as a loaded box may be slow to reap."""
    deadline = time.monotonic() + within_s
    while _stat(pid) is not None and _state(pid) != "Z":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:  # gone between the two reads
        return "Z"


def test_a_finished_command_returns_its_exit_code_and_output():
    done = run_tree(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
        timeout=60,
        env=dict(os.environ),
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
