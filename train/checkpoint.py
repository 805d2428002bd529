"""last/: Accelerate's state (model, optimizer, scheduler, scaler, RNG) plus our trainer_state.json.

The folder is built under a temporary name by every process and swapped in whole by the main
process; trainer_state.json is written last. A kill at any instant leaves either the previous
complete last/ or the new one, never a half-written folder that resume would pick.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from core.errors import UserError, disk_full
from core.fsio import recover_dir, shown_as, swap_dir, write_json_atomic

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


def find_last(run_dir: Path) -> Path | None:
    """The run's complete last/, after repairing a crash in the middle of its swap (see core.fsio.swap_dir).

    Every path that looks for last/ goes through here, so a run caught between the two renames resumes
    from its previous checkpoint instead of starting over (and then deleting that checkpoint)."""
    last = run_dir / LAST_DIR
    recover_dir(last)
    return last if is_complete(last) else None


def save_last(accelerator: Accelerator, run_dir: Path, state: TrainerState) -> Path:
    """Collective: every process must call it (each writes its own RNG state)."""
    dest = run_dir / LAST_DIR
    tmp = run_dir / f".{LAST_DIR}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with shown_as(tmp, dest):  # a full disk names last/, not the temp folder the user never made
        with _torch_save_through_python():
            accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, asdict(state))
            swap_dir(tmp, dest)  # core.fsio.recover_dir repairs a crash mid-swap
    accelerator.wait_for_everyone()
    return dest


@contextlib.contextmanager
def _torch_save_through_python():
    """While Accelerate saves a state, torch.save given a path opens it here. Given a path, torch writes
    through C++'s ofstream, whose failure on a full disk says only "iostream error" / "unexpected pos" (a
    traceback); given a Python file, its write raises the OS error (ENOSPC, EDQUOT, EFBIG): named here."""
    real = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(f, (str, os.PathLike)):
            return real(obj, f, *args, **kwargs)
        try:
            with open(f, "wb") as fh:
                return real(obj, fh, *args, **kwargs)
        except Exception as exc:  # torch's zip writer may replace the OS error with its own on the way out
            full = disk_full(exc)
            if not isinstance(full, OSError):
                raise
            raise OSError(full.errno, full.strerror, full.filename or os.fspath(f)) from exc

    torch.save = save
    try:
        yield
    finally:
        torch.save = real


def read_state(last: Path) -> TrainerState:
    try:
        return TrainerState.from_dict(json.loads((last / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(
            f"{last / STATE_FILE} is unreadable ({exc}); resume from another last/ or start anew"
        ) from None


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole: its header names where the last tensor ends."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            return f"truncated ({size} bytes, shorter than its own header)"
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return "corrupt (its header is not JSON)"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if size == expected:
        return None
    return f"{'truncated' if size < expected else 'damaged'} ({size} bytes where its header says {expected})"


def _torch_file_problem(path: Path) -> str | None:
    """torch.save writes a zip archive; a cut-off one has no central directory at its end."""
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError) as exc:
        return f"truncated or corrupt ({exc})"


FILE_CHECKS = {
    ".safetensors": _safetensors_problem,
    ".bin": _torch_file_problem,
    ".pkl": _torch_file_problem,
    ".pt": _torch_file_problem,
}


def check_files(last: Path) -> None:
    """Refuse a damaged checkpoint with the file's name, before Accelerate fails on it with a traceback.

    Reads headers and zip directories only; every process checks every file (all ranks' RNG states
    included), so all of them stop together rather than one waiting at a collective."""
    for path in sorted(last.iterdir()):
        check = FILE_CHECKS.get(path.suffix)
        problem = check(path) if check and path.is_file() else None
        if problem:
            raise UserError(
                f"{path} is {problem}, so {last} cannot be resumed; resume from another checkpoint "
                f"(train.resume=PATH), or delete {last} to train this run again from its first epoch"
            )


def check_ema_state(last: Path, expected: int) -> None:
    """The EMA shadow (train.ema_decay > 0) is last/'s custom_checkpoint_0.pkl: a run saved without it
    cannot resume with it on (Accelerate would fail with a traceback on the missing file)."""
    saved = len(list(last.glob("custom_checkpoint_*.pkl")))
    if saved < expected:
        raise UserError(
            f"{last} was saved without an EMA of the weights (train.ema_decay: 0), so it cannot resume "
            "with train.ema_decay > 0; resume with train.ema_decay=0 or start a new run (another run.name)"
        )


def load_last(accelerator: Accelerator, last: Path) -> TrainerState:
    """Restore model/optimizer/scheduler/scaler/RNG into the prepared objects; return the trainer state."""
    state = read_state(last)
    check_files(last)
    check_ema_state(last, len(accelerator._custom_objects))
    try:
        accelerator.load_state(str(last))
    except (RuntimeError, ValueError, KeyError) as exc:
        if not _is_mismatch(exc):
            raise
        raise UserError(
            f"{last} does not fit the model this config builds ({_first_line(exc)}): it was trained with "
            f"another model, head or class list; resume it with its own config ({last.parent / 'config.yaml'}) "
            "or start a new run (another run.name)"
        ) from None
    return state


_MISMATCH = ("size mismatch", "Missing key", "Unexpected key", "parameter group", "state_dict")


def _is_mismatch(exc: BaseException) -> bool:
    """load_state_dict's and the optimizer's words for a checkpoint of another model (not a crash)."""
    return any(m in str(exc) for m in _MISMATCH)


def _first_line(exc: BaseException, limit: int = 100) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if any(m in ln for m in _MISMATCH[:4])), lines[0] if lines else "")
    return detail if len(detail) <= limit else detail[: limit - 1] + "…"


def resume_dir(path: str | Path) -> Path:
    """A user's train.resume PATH: a last/ folder or the run folder holding it."""
    p = Path(path).expanduser()
    if p.name == LAST_DIR:
        recover_dir(p)
    for candidate in (p, find_last(p)):
        if candidate is not None and candidate.is_dir() and is_complete(candidate):
            return candidate
    raise UserError(
        f"train.resume: {p} holds no complete checkpoint ({STATE_FILE} missing); "
        f"point it at runs/<name>/{LAST_DIR} or use train.resume=auto"
    )


def latest_run_with_last(output_dir: Path, prefix: str) -> Path | None:
    """The newest run folder named `<prefix>*` with a complete last/, for train.resume=auto without run.name."""
    if not output_dir.is_dir():
        return None
    runs = {}  # folder → its state file's mtime; looked at only: the chosen one is repaired once locked
    for d in output_dir.iterdir():
        if d.is_dir() and d.name.startswith(prefix):
            for last in (d / LAST_DIR, d / f".{LAST_DIR}.old"):  # .old: caught between swap_dir's renames
                if is_complete(last):
                    runs[d] = (last / STATE_FILE).stat().st_mtime
                    break
    return max(runs, key=runs.get, default=None)
