"""Is the run a bundle belongs to still training? Then best/ can be replaced after the export.

Two signs, read from the run folder (best/'s parent) without touching it:
- the run's OS lock is held: training is running now (authoritative; the lock dies with its process);
- last/trainer_state.json stands before the run's last epoch (config.yaml's train.epochs) and not early
  stopped: the run is running, or stopped and resumable — either way best/ may still change.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import yaml

from core.lock import lock_path

LAST_DIR, STATE_FILE, CONFIG_FILE = "last", "trainer_state.json", "config.yaml"  # what train writes
MISMATCH = "best/ may be replaced after this export, which would then no longer match it"


def lock_holder(lock: Path) -> dict[str, Any] | None:
    """The holder's description when someone holds `lock` now, else None. Only the flock counts: a file
    left by a killed run is not held. The probe takes a shared lock for an instant and drops it."""
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                return {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe(holder: dict[str, Any]) -> str:
    who = [
        f"pid {holder['pid']}" if "pid" in holder else "",
        f"on {holder['host']}" if "host" in holder else "",
    ]
    who += [f"since {holder['started']}" if "started" in holder else ""]
    return " ".join(w for w in who if w)


def unfinished_epochs(run_dir: Path) -> tuple[int, int] | None:
    """(epochs done, epochs planned) when last/ stands before the end and did not stop early, else None."""
    try:
        state = json.loads((run_dir / LAST_DIR / STATE_FILE).read_text())
        planned = int(yaml.safe_load((run_dir / CONFIG_FILE).read_text())["train"]["epochs"])
        done, finished = int(state["epoch"]), bool(state.get("finished"))
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None  # not a run folder train wrote (a copied bundle), or one this check cannot read
    return None if finished or done >= planned else (done, planned)


def training_warning(bundle: Path) -> str | None:
    """One line for the user when the bundle's run is still training (or can be resumed), else None."""
    run_dir = Path(os.path.realpath(bundle)).parent
    holder = lock_holder(lock_path(run_dir))  # train's run lock, where OutputLock puts it
    if holder is not None:
        who = _describe(holder)
        return (
            f"{run_dir} is still training{f' ({who})' if who else ''}: {MISMATCH}; "
            "export again when training ends"
        )
    epochs = unfinished_epochs(run_dir)
    if epochs is not None:
        return (
            f"{run_dir} has not finished training ({epochs[0]} of {epochs[1]} epochs in {LAST_DIR}/): if it "
            f"is still running or is resumed, {MISMATCH}; export again when training ends"
        )
    return None
