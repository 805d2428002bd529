"""Attacks on the Ctrl-C-while-starting handler (core/interrupt.py): it must take over only our own commands'
start, never a user's script that imports `core` as a library, nor a multiprocessing child; and a Ctrl-C,
SIGTERM or a double Ctrl-C at the transition leaves one line (or none), the right code and nothing written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.interrupt import started_as_command
from tests.test_ctrl_c_imports import HOLD, READY, _commands, _wait_for_line, inputs  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
USER_SCRIPT = """
import time
import core  # as `from serve.api import Classifier` does first
try:
    print("ready", flush=True)
    time.sleep(300)
finally:
    print("my cleanup ran", flush=True)
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "IMGCLF_DEBUG")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def _held_env(module: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment that holds the import of `module` (tests/test_ctrl_c_imports.py's HOLD hook)."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOLD)
    env = _env(tmp_path, HOLD_IMPORT=module, **extra)
    env["PYTHONPATH"] = f"{hook}{os.pathsep}{REPO}"
    return env


def _run_code(code: str, tmp_path: Path, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python -c code` to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _popen(argv: list[str], env: dict[str, str], tmp_path: Path, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.txt", "w"),  # noqa: SIM115 (closed with the process)
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signal_when_ready(proc: subprocess.Popen, ready: str, signals: list[int]) -> tuple[int, str]:
    try:
        line = _wait_for_line(proc, timeout=300)
        assert line.startswith(ready), line
        for sig in signals:
            proc.send_signal(sig)
        rc = proc.wait(timeout=120)
        return rc, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _held(module: str, argv: list[str], tmp_path: Path, signals: list[int], **env: str) -> tuple[int, str]:
    """Run `argv` with the import of `module` held (tests/test_ctrl_c_imports.py), send `signals` there."""
    rc, _ = _signal_when_ready(
        _popen(argv, _held_env(module, tmp_path, **env), tmp_path), READY + module, signals
    )
    return rc, (tmp_path / "stderr.txt").read_text()


# --- 1. only our own entry points ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["train/main.py", "serve/main.py", "export/main.py", "serve/sort.py"])
def test_a_users_script_named_like_a_command_keeps_its_own_ctrl_c(name, tmp_path):
    """A user's `myproj/train/main.py` that imports us as a library: their Ctrl-C runs their `finally`."""
    script = tmp_path / "myproj" / name
    script.parent.mkdir(parents=True)
    script.write_text(USER_SCRIPT)
    proc = _popen([str(script)], _env(tmp_path), tmp_path, cwd=tmp_path / "myproj")
    rc, out = _signal_when_ready(proc, "ready", [signal.SIGINT])
    err = (tmp_path / "stderr.txt").read_text()
    assert "my cleanup ran" in out, (rc, out, err[-2000:])
    assert rc != 130 and "KeyboardInterrupt" in err  # Python's own Ctrl-C, not ours


def test_only_our_files_and_exact_console_script_names_count_as_commands(tmp_path):
    assert started_as_command(str(REPO / "train" / "main.py"))
    assert started_as_command(os.path.relpath(REPO / "serve" / "sort.py"))  # `python serve/sort.py`
    link = tmp_path / "serve-link.py"
    link.symlink_to(REPO / "serve" / "main.py")
    assert started_as_command(str(link))  # a symlink to our entry file is our entry file
    assert started_as_command("/opt/venv/bin/imgclf-export")
    for theirs in ("/home/u/train/main.py", "/home/u/p/serve/sort.py", "train.py", "main.py", "-c", ""):
        assert not started_as_command(theirs), theirs
    assert not started_as_command("/usr/lib/python3/ipykernel_launcher.py")  # a Jupyter kernel
    assert not started_as_command("/opt/venv/bin/imgclf-train-wrapper")
    assert not started_as_command("bad\0name")


SPAWN_PARENT = """
import multiprocessing as mp, signal, sys
sys.argv[0] = sys.modules["__main__"].__file__ = {main!r}  # as `python train/demo_data.py` leaves them
import core
from tests.test_ctrl_c_attacks import sigint_handler_name
if __name__ == "__main__":
    with mp.get_context("spawn").Pool(1) as pool:
        print("child:", pool.apply(sigint_handler_name), flush=True)
"""


def sigint_handler_name() -> str:
    handler = signal.getsignal(signal.SIGINT)
    return getattr(handler, "__name__", str(handler))


def test_a_spawned_child_of_a_command_does_not_take_the_exit_at_once_handler(tmp_path):
    """A spawn child (torch DataLoader workers on macOS, a spawn Pool) re-runs the parent's main file as
    `__mp_main__` with the parent's argv, and never calls started(): it must keep Python's handler, or
    every worker would print "interrupted" and exit at once on a group Ctrl-C."""
    code = SPAWN_PARENT.format(main=str(REPO / "train" / "demo_data.py"))
    out = _run_code(code, tmp_path, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "child: default_int_handler" in out.stdout, out.stdout


# --- 2. nothing written before started() ------------------------------------------------------------------


@pytest.mark.parametrize("module", ["serve.main", "export.main", "train.main"])
def test_ctrl_c_while_importing_torch_leaves_no_output_lock_or_run_folder(module, inputs, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    rc, err = _held("torch", ["-m", module, *_commands(inputs, out)[module]], tmp_path, [signal.SIGINT])
    assert rc == 130 and err.strip().splitlines() == ["interrupted"], (rc, err[-3000:])
    assert sorted(p.name for p in out.rglob("*")) == [], list(out.rglob("*"))


# --- 3. more signals, other signals, debug ----------------------------------------------------------------


def test_two_quick_ctrl_c_while_starting_are_one_line(inputs, tmp_path):  # noqa: F811
    argv = ["-m", "serve.main", *_commands(inputs, tmp_path)["serve.main"]]
    rc, err = _held("torch", argv, tmp_path, [signal.SIGINT, signal.SIGINT])
    assert rc == 130 and err.strip().splitlines() == ["interrupted"], (rc, err[-3000:])


def test_two_quick_ctrl_c_just_after_started_are_the_stages_line_only(inputs, tmp_path):  # noqa: F811
    """onnxruntime loads once export has called started(): two Ctrl-C there, one cleanup, no traceback."""
    argv = ["-m", "export.main", *_commands(inputs, tmp_path)["export.main"]]
    rc, err = _held("onnxruntime", argv, tmp_path, [signal.SIGINT, signal.SIGINT])
    assert rc == 130 and "Traceback" not in err and "Exception ignored" not in err, (rc, err[-3000:])
    assert err.strip().splitlines()[-1].startswith("interrupted: nothing was written"), err[-3000:]
    assert not (tmp_path / "export").exists()


def test_sigterm_while_starting_ends_quietly_without_a_traceback(inputs, tmp_path):  # noqa: F811
    argv = ["-m", "train.main", *_commands(inputs, tmp_path)["train.main"]]
    rc, err = _held("torch", argv, tmp_path, [signal.SIGTERM])
    assert rc == -signal.SIGTERM and err.strip() == "", (
        rc,
        err[-3000:],
    )  # a shell shows 143, as for any kill


def test_ctrl_c_while_starting_with_debug_adds_where_it_stood(inputs, tmp_path):  # noqa: F811
    argv = ["-m", "serve.main", *_commands(inputs, tmp_path)["serve.main"]]
    rc, err = _held("torch", argv, tmp_path, [signal.SIGINT], IMGCLF_DEBUG="1")
    lines = err.strip().splitlines()
    assert rc == 130 and lines[0] == "interrupted", (rc, err[-3000:])
    assert any("serve/main.py" in line or "serve/run.py" in line for line in lines[1:]), err[-3000:]
    assert "Traceback" not in err  # a stack for the report, not an error


IN_PROCESS = """
import sys
from serve.main import main
try:
    print("rc", main(sys.argv[1:]), flush=True)
finally:
    print("my cleanup ran", flush=True)
"""


def test_a_script_calling_main_in_process_keeps_its_ctrl_c_and_its_cleanup(inputs, tmp_path):  # noqa: F811
    """A user's driver script (or a notebook) calling serve's main(): a Ctrl-C while it imports torch must
    not os._exit the user's process: main() says "interrupted" and returns 130, their code goes on."""
    script = tmp_path / "drive.py"
    script.write_text(IN_PROCESS)
    env = _held_env("torch", tmp_path)
    argv = [str(script), *_commands(inputs, tmp_path)["serve.main"]]
    rc, out = _signal_when_ready(_popen(argv, env, tmp_path), READY + "torch", [signal.SIGINT])
    err = (tmp_path / "stderr.txt").read_text()
    assert "rc 130" in out and "my cleanup ran" in out and rc == 0, (rc, out, err[-2000:])
    assert err.strip().splitlines()[-1] == "interrupted", err[-2000:]


LIBRARY_INTERRUPT = """
import os, signal, threading
from core.interrupt import interrupt_once
try:
    with interrupt_once():
        os.kill(os.getpid(), signal.SIGINT)
        signal.pause()
except KeyboardInterrupt:
    pass
timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
print(signal.getsignal(signal.SIGINT).__name__, len(timers), flush=True)
"""


def test_interrupt_once_in_a_library_process_leaves_its_ctrl_c_and_arms_no_exit(tmp_path):
    """serve's run is wrapped in interrupt_once; called from a notebook, the first Ctrl-C used to leave
    SIGINT ignored for good (the kernel's interrupt button dead) and arm an os._exit 30 s later."""
    proc = _run_code(LIBRARY_INTERRUPT, tmp_path, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["default_int_handler", "0"], proc.stdout
