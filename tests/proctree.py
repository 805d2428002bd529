"""Run a command whose process tree must end by a deadline: a hang fails fast, shows its output, leaves no orphans.

`accelerate launch` starts a torchrun agent, which starts each worker in a session of its own, so killing
the launcher's process group misses the workers. The tree is therefore recorded while it runs (pid and
start time, so a recycled pid is never hit) and every member still alive at the end is killed.
Output goes to files, not pipes: a stray worker holding a pipe open cannot block the reading.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

TAIL = 4000  # characters of each stream shown when a command misses its deadline


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _descendants(root: int) -> dict[int, str]:
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))):
            parents.setdefault(info[0], []).append(int(entry))
            starts[int(entry)] = info[1]
    found, todo = {}, [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _kill(tree: dict[int, str]) -> None:
    for pid, start in tree.items():
        info = _stat(pid)
        if info and info[1] == start:  # the same process, not a later one given the same pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_tree(cmd: list[str], timeout: float, **popen_kw) -> subprocess.CompletedProcess:
    """Like subprocess.run(capture_output=True, text=True), but a command still running after `timeout`
    seconds fails the test with the tail of its output, and its whole tree is killed either way."""
    return run_trees([(cmd, popen_kw)], timeout)[0]


def run_trees(commands: list[tuple[list[str], dict]], timeout: float) -> list[subprocess.CompletedProcess]:
    """run_tree for commands that must run at the same time (e.g. one launcher per node), one shared deadline."""
    with contextlib.ExitStack() as stack:
        files = [
            (stack.enter_context(tempfile.TemporaryFile()), stack.enter_context(tempfile.TemporaryFile()))
            for _ in commands
        ]
        procs = [
            subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, **kw)
            for (cmd, kw), (out, err) in zip(commands, files)
        ]
        tree: dict[int, str] = {}
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                for p in procs:
                    tree.update(_descendants(p.pid))
                time.sleep(0.25)
        finally:  # also when the test run itself is interrupted
            hung = [p.poll() is None for p in procs]
            for p in procs:
                tree.update(_descendants(p.pid))
                if p.poll() is None:
                    p.kill()
            _kill(tree)
            for p in procs:
                p.wait()
        outputs = [(_read(out), _read(err)) for out, err in files]
    if any(hung):
        shown = "\n".join(
            f"=== {' '.join(map(str, cmd[:6]))} ... ({'hung' if h else f'exit {p.returncode}'})\n"
            f"--- stdout (tail) ---\n{o[-TAIL:]}\n--- stderr (tail) ---\n{e[-TAIL:]}"
            for (cmd, _), p, h, (o, e) in zip(commands, procs, hung, outputs)
        )
        pytest.fail(
            f"still running after {timeout:.0f} s; killed with {len(tree)} child process(es)\n{shown}",
            pytrace=False,
        )
    return [
        subprocess.CompletedProcess(cmd, p.returncode, o, e)
        for (cmd, _), p, (o, e) in zip(commands, procs, outputs)
    ]


def _read(fh) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace")
