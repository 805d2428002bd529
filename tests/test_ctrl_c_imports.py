"""Ctrl-C while a command is still starting (importing torch, numpy, ...) is one line and exit 130, never a
traceback: for every command, in the forms a user types it (`python -m X`, `python X.py`, the console script).

The Ctrl-C lands inside the import for certain, not by timing: a sitecustomize (on PYTHONPATH) holds the
named import, says so on stdout, and waits there; the test sends SIGINT only once it has read that line.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.interrupt import COMMAND_FILES, COMMAND_SCRIPTS, started_as_command

REPO = Path(__file__).resolve().parents[1]
READY = "holding the import of "
HOLD = f"""
import importlib.abc, os, sys, time

def _importing():  # Hold.find_spec <- importlib's _find_spec <- an import, not a probe (importlib.util.find_spec)
    return sys._getframe(3).f_code.co_name == "_find_and_load_unlocked"

class Hold(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["HOLD_IMPORT"] and _importing():
            sys.meta_path.remove(self)
            print("{READY}" + name, flush=True)
            end = time.monotonic() + 300
            while time.monotonic() < end:  # the SIGINT arrives here, inside the import
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, Hold())
"""
CONSOLE_SCRIPT = "import sys; sys.argv[0] = {!r}; from {} import main; sys.exit(main())"


def _wait_for_line(proc: subprocess.Popen, timeout: float) -> str:
    """The first stdout line, polled with a deadline (a loaded machine takes its time to start Python)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline()


def interrupt_while_importing(argv: list[str], module: str, tmp_path: Path) -> tuple[int, str]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOLD)
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{REPO}", "HOLD_IMPORT": module}
    env.pop("LOCAL_RANK", None)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=lambda: signal.signal(
                signal.SIGINT, signal.SIG_DFL
            ),  # even under a suite run with ^C off
        )
        try:
            line = _wait_for_line(proc, timeout=300)
            assert line.startswith(READY + module), (line, err_path.read_text()[-3000:])
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    return rc, err_path.read_text()


def _assert_one_line_130(rc: int, err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert rc == 130, (rc, err[-3000:])
    assert err.strip().splitlines() == ["interrupted"], err[-3000:]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """What each command's flags must name to pass their checks and reach the heavy imports."""
    root = tmp_path_factory.mktemp("inputs")
    from tests.export.export_helpers import save_tiny_bundle

    bundle = save_tiny_bundle(root / "best", arch="cifar_cnn")
    images = root / "images" / "a"
    images.mkdir(parents=True)
    (images / "x.png").write_bytes(b"not read before the Ctrl-C")
    preds = root / "preds.csv"
    preds.write_text("path,status\n")
    return {"bundle": bundle, "images": root / "images", "preds": preds}


def _commands(inputs: dict[str, Path], out: Path) -> dict[str, list[str]]:
    return {
        "serve.main": [str(inputs["bundle"]), str(inputs["images"]), "--out", str(out / "p.csv")],
        "export.main": [str(inputs["bundle"]), "--out", str(out / "export")],
        "train.main": [
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            f"data.root={inputs['images']}",
            f"run.output_dir={out / 'runs'}",
        ],
        "serve.sort": [str(inputs["preds"]), "--to", str(out / "sorted")],
        "train.split": [str(inputs["images"]), str(out / "split")],
        "train.demo_data": [str(out / "demo")],
    }


@pytest.mark.parametrize(
    "module,held",
    [
        ("serve.main", "torch"),  # the heavy import, once the flags are checked
        ("export.main", "torch"),
        ("train.main", "torch"),
        ("serve.main", "numpy"),  # the module-level imports, before main() runs
        ("serve.sort", "numpy"),
        ("train.split", "numpy"),
        ("train.demo_data", "numpy"),
    ],
)
def test_ctrl_c_while_python_m_command_imports_is_one_line_exit_130(module, held, inputs, tmp_path):
    argv = ["-m", module, *_commands(inputs, tmp_path)[module]]
    _assert_one_line_130(*interrupt_while_importing(argv, held, tmp_path))


@pytest.mark.parametrize("script,module", [("imgclf-train", "train.main"), ("imgclf-sort", "serve.sort")])
def test_ctrl_c_while_console_script_imports_is_one_line_exit_130(script, module, inputs, tmp_path):
    """As pip's generated script runs it: argv[0] is the script, then `from MODULE import main`."""
    code = CONSOLE_SCRIPT.format(f"/venv/bin/{script}", module)
    argv = ["-c", code, *_commands(inputs, tmp_path)[module]]
    _assert_one_line_130(
        *interrupt_while_importing(argv, "torch" if module == "train.main" else "numpy", tmp_path)
    )


def test_ctrl_c_while_script_path_imports_is_one_line_exit_130(inputs, tmp_path):
    argv = ["export/main.py", *_commands(inputs, tmp_path)["export.main"]]
    _assert_one_line_130(*interrupt_while_importing(argv, "torch", tmp_path))


def test_every_console_script_and_entry_file_is_guarded():
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = {line.split("=")[0].strip(): line.split('"')[1] for line in block.splitlines() if "=" in line}
    assert set(scripts) == set(COMMAND_SCRIPTS)
    files = {target.split(":")[0].replace(".", "/") + ".py" for target in scripts.values()}
    assert files == set(COMMAND_FILES)
    for name in scripts:
        assert started_as_command(f"/home/u/venv/bin/{name}")
    assert started_as_command(str(REPO / "serve" / "main.py")) and started_as_command("train/main.py")
    assert not started_as_command("/usr/bin/pytest") and not started_as_command("-c")
    assert not started_as_command("/home/u/mytrain/main.py")  # someone else's script


def test_ctrl_c_in_an_import_after_the_command_started_is_the_stages_own_line(inputs, tmp_path):
    """onnxruntime loads lazily, once export is at work: there the stage's own Ctrl-C handling speaks."""
    argv = ["-m", "export.main", *_commands(inputs, tmp_path)["export.main"]]
    rc, err = interrupt_while_importing(argv, "onnxruntime", tmp_path)
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert rc == 130, (rc, err[-3000:])
    assert err.strip().splitlines()[-1].startswith("interrupted: nothing was written"), err[-3000:]
    assert not (tmp_path / "export").exists()


def test_command_turns_a_keyboard_interrupt_into_one_line_and_restores_the_handler(capsys):
    from core.interrupt import command, started

    before = signal.getsignal(signal.SIGINT)

    @command
    def main() -> int:
        started()
        raise KeyboardInterrupt

    assert main() == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_command_leaves_an_ignored_sigint_ignored():
    from core.interrupt import command

    seen = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        command(lambda: seen.append(signal.getsignal(signal.SIGINT)) or 0)()
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
