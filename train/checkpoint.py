"""last/: Accelerate's state (model, optimizer, scheduler, scaler, RNG) plus our trainer_state.json.

The folder is built under a temporary name by every process and swapped in whole by the main
process; trainer_state.json is written last. A kill at any instant leaves either the previous
complete last/ or the new one, never a half-written folder that resume would pick.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from core.errors import UserError
from core.fsio import recover_dir, swap_dir, write_json_atomic

LAST_DIR = "last"
STATE_FILE = "trainer_state.json"
STATE_VERSION = 1


@dataclass
class TrainerState:
    """Where training stands. `epoch`/`step`: the next epoch (0-based) and the batches already done in it."""

    epoch: int = 0
    step: int = 0
    best: dict[str, Any] | None = None
    epochs_since_best: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    partial: dict[str, Any] = field(default_factory=dict)  # sums of an interrupted epoch
    config_hash: str = ""
    finished: bool = False
    version: int = STATE_VERSION

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def is_complete(last: Path) -> bool:
    return (last / STATE_FILE).is_file()


def save_last(accelerator: Accelerator, run_dir: Path, state: TrainerState) -> Path:
    """Collective: every process must call it (each writes its own RNG state)."""
    dest = run_dir / LAST_DIR
    tmp = run_dir / f".{LAST_DIR}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, asdict(state))
        swap_dir(tmp, dest)  # core.fsio.recover_dir repairs a crash mid-swap
    accelerator.wait_for_everyone()
    return dest


def read_state(last: Path) -> TrainerState:
    try:
        return TrainerState.from_dict(json.loads((last / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{last / STATE_FILE} is unreadable ({exc}); resume from another last/ or start anew") \
            from None


def load_last(accelerator: Accelerator, last: Path) -> TrainerState:
    """Restore model/optimizer/scheduler/scaler/RNG into the prepared objects; return the trainer state."""
    state = read_state(last)
    accelerator.load_state(str(last))
    return state


def resume_dir(path: str | Path) -> Path:
    """A user's train.resume PATH: a last/ folder or the run folder holding it."""
    p = Path(path).expanduser()
    recover_dir(p / LAST_DIR)
    for candidate in (p, p / LAST_DIR):
        if candidate.is_dir() and is_complete(candidate):
            return candidate
    raise UserError(f"train.resume: {p} holds no complete checkpoint ({STATE_FILE} missing); "
                    f"point it at runs/<name>/{LAST_DIR} or use train.resume=auto")


def latest_run_with_last(output_dir: Path, prefix: str) -> Path | None:
    """The newest run folder named `<prefix>*` with a complete last/, for train.resume=auto without run.name."""
    if not output_dir.is_dir():
        return None
    runs = []
    for d in output_dir.iterdir():
        if d.is_dir() and d.name.startswith(prefix):
            recover_dir(d / LAST_DIR)
            if is_complete(d / LAST_DIR):
                runs.append(d)
    return max(runs, key=lambda d: (d / LAST_DIR / STATE_FILE).stat().st_mtime, default=None)
