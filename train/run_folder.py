"""A training run's folder: which one (run.name, run.output_dir, train.resume), locked and repaired before
anything in it is read; whether a resumed run has anything left to do; the files written into it first."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from core.config import Config
from core.errors import UserError
from core.figures import write_batch_grid
from core.fsio import repair_swaps, write_text_atomic
from core.lock import OutputLock
from train.checkpoint import LAST_DIR, find_last, latest_run_with_last, read_state, resume_dir
from train.data import TrainData, find_split
from train.engine import BEST_DIR
from train.feed import Feed

TEST_METRICS = "test_metrics.json"  # written by core.evaluation.write_evaluation
PREVIEW_IMAGES = 16  # the train_batch.png grid here, the test predictions grid in train/run.py


def _new_run_dir(out: Path, stem: str) -> Path:
    base = out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, i = base, 2
    while run_dir.exists():
        run_dir, i = base.with_name(f"{base.name}-{i}"), i + 1
    return run_dir


def check_writable(run_dir: Path) -> None:
    """Fail before training, not with a traceback at the first write: the run folder must be creatable."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"cannot create the run folder {run_dir}: {existing} is not a writable folder; "
            "set run.output_dir (or run.name) to a folder you can write"
        )


def resolve_run(cfg: Config, stem: str, held: contextlib.ExitStack) -> tuple[Path, Path | None]:
    """(run folder, last/ to resume from or None) from run.name, run.output_dir and train.resume.

    Main process only. The run folder is locked (into `held`) before anything in it is looked at or
    repaired, so a second training on the same folder is refused naming the first, never interleaved."""

    def lock_and_repair(run_dir: Path) -> None:
        check_writable(run_dir)  # before the lock file is made beside it: the message names run.output_dir
        held.enter_context(run_lock(run_dir))
        for line in repair_swaps(run_dir, (BEST_DIR,)):
            print(line, flush=True)

    return _resolve_run(cfg, stem, lock_and_repair)


def _resolve_run(cfg: Config, stem: str, lock: Callable[[Path], Any]) -> tuple[Path, Path | None]:
    out, name, resume = Path(cfg.run.output_dir), cfg.run.name, cfg.train.resume
    if resume and resume != "auto":
        given = Path(resume).expanduser()
        lock(out / name if name else (given.parent if given.name == LAST_DIR else given))
        last = resume_dir(resume)
        return (out / name if name else last.parent), last
    if resume == "auto":
        run_dir = out / name if name else latest_run_with_last(out, f"{stem}-")
        if run_dir is None:
            run_dir = _new_run_dir(out, stem)
        lock(run_dir)
        return run_dir, find_last(run_dir)
    if name:
        run_dir = out / name
        lock(run_dir)
        find_last(
            run_dir
        )  # a crash mid-swap leaves only .last.old: that is still a run to refuse to overwrite
        if (run_dir / LAST_DIR).exists() or (run_dir / BEST_DIR).exists():
            raise UserError(
                f"run folder {run_dir} already holds a run; continue it with train.resume=auto "
                "or choose another run.name"
            )
        return run_dir, None
    run_dir = _new_run_dir(out, stem)
    lock(run_dir)
    return run_dir, None


def finished_note(cfg: Config, run_dir: Path, last: Path | None) -> str | None:
    """For a resumed run that has nothing left to train: what it reached, said instead of 'resuming'."""
    if last is None:
        return None
    state = read_state(last)
    if not (state.finished or state.epoch >= cfg.train.epochs):
        return None
    if _test_pending(cfg, run_dir):
        return None  # stopped during its final evaluation: resuming runs that evaluation
    best = state.best or {}
    how = "early-stopped" if state.epoch < cfg.train.epochs else "finished"
    return (
        f"run {run_dir} is {how} ({state.epoch}/{cfg.train.epochs} epochs, best valid_acc "
        f"{best.get('valid_acc', 0):.3f} at epoch {best.get('epoch')}); nothing to do. Its bundle is "
        f"{run_dir / BEST_DIR}; choose another run.name to train a new run"
    )


def _test_pending(cfg: Config, run_dir: Path) -> bool:
    """A run is finished only once its test metrics exist (a stop can land during the test evaluation)."""
    if (run_dir / TEST_METRICS).is_file() or not (run_dir / BEST_DIR).is_dir():
        return False
    return cfg.data.source == "cifar10" or find_split(Path(cfg.data.root), "test") is not None


def run_lock(run_dir: Path) -> OutputLock:
    return OutputLock(run_dir, "training", "choose another run.name")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def write_run_files(cfg: Config, data: TrainData, feed: Feed, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if (run_dir / "train_batch.png").is_file():  # a resumed run: the same seed would draw the same batch
        return
    images, labels = feed.preview(PREVIEW_IMAGES)
    if len(images):
        write_batch_grid(images, [data.display_names[y] for y in labels], run_dir / "train_batch.png")
