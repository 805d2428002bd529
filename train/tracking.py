"""Experiment tracking (`run.log_with`) through Accelerate's trackers.

What a tracker gets: the resolved config as flat hyper-parameters, per-step training loss and learning
rate every `train.log_every` steps, the per-epoch metrics row, and the figures (curves each epoch, the
test confusion matrix and predictions at the end) where the tracker takes images. Everything happens on
the main process; `finish` closes the trackers (also safe to call twice, and before end_training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from core.config import Config
from core.errors import UserError

PROJECT = "imgclf"  # wandb project / mlflow experiment; the run is named after its run folder

# The pip package that makes each tracker available; tensorboard also comes with the project's extra.
PIP = {
    "tensorboard": "pip install -e '.[tensorboard]' (or pip install tensorboard)",
    "wandb": "pip install wandb",
    "mlflow": "pip install mlflow",
    "comet_ml": "pip install comet_ml",
    "aim": "pip install aim",
    "clearml": "pip install clearml",
    "dvclive": "pip install dvclive",
    "swanlab": "pip install swanlab",
    "trackio": "pip install trackio",
}


def check_installed(names: list[str]) -> None:
    """One error line naming the install command, before any work, for a tracker that is not installed."""
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            raise UserError(
                f"run.log_with: {name} is not installed in this environment; {PIP.get(name, '')}"
                " — or set run.log_with=none"
            )


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """{'train': {'optimizer': {'lr': 1e-3}}} → {'train.optimizer.lr': 0.001}; lists and null become text,
    since trackers' hyper-parameter tables take scalars only."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _init_kwargs(name: str, run_dir: Path) -> dict[str, Any]:
    """Where each tracker writes, and the run's name in it."""
    by_name: dict[str, Callable[[], dict[str, Any]]] = {
        "wandb": lambda: {"name": run_dir.name, "dir": str(run_dir)},
        "mlflow": lambda: {"run_name": run_dir.name},
    }
    return by_name.get(name, dict)()


def _make(name: str, run_dir: Path):
    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":  # runs/<name>/tensorboard/: `tensorboard --logdir runs` shows every run
        return cls("tensorboard", str(run_dir))
    if getattr(cls, "requires_logging_directory", False):
        return cls(PROJECT, str(run_dir), **_init_kwargs(name, run_dir))
    return cls(PROJECT, **_init_kwargs(name, run_dir))


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _tensorboard_images(tracker, images: dict[str, np.ndarray], step: int) -> None:
    tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")


def _wandb_images(tracker, images: dict[str, np.ndarray], step: int) -> None:
    tracker.log_images({k: [v] for k, v in images.items()}, step=step)


# Trackers that take images, and how; the others get the numbers only (the PNGs stay in the run folder).
IMAGE_WRITERS: dict[str, Callable[[Any, dict[str, np.ndarray], int], None]] = {
    "tensorboard": _tensorboard_images,
    "wandb": _wandb_images,
}


class Tracking:
    """The run's trackers; every method is a no-op without any (or off the main process)."""

    def __init__(self, accelerator: Accelerator, names: list[str]):
        self.acc, self.names = accelerator, names
        self.on = bool(names) and accelerator.is_main_process

    @classmethod
    def start(cls, accelerator: Accelerator, cfg: Config, run_dir: Path) -> Tracking:
        names = cfg.run.trackers()
        self = cls(accelerator, names)
        if self.on:
            accelerator.log_with = [_make(n, run_dir) for n in names]
            accelerator.init_trackers(PROJECT, config=flat_hparams(cfg.to_dict()))
        return self

    def log(self, values: dict[str, float], step: int) -> None:
        if self.on:
            self.acc.log(values, step=step)

    def images(self, paths: dict[str, Path], step: int) -> None:
        if not self.on:
            return
        images = {k: _png(p) for k, p in paths.items() if p.is_file()}
        for tracker in self.acc.trackers:
            writer = IMAGE_WRITERS.get(tracker.name)
            if writer and images:
                writer(tracker, images, step)

    def finish(self) -> None:
        """Close the trackers now (flushes event files); end_training later finds none left to close."""
        if self.on:
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.trackers = []
            self.on = False
