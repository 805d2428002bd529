"""Fixtures for training tests: in-process runs with a clean Accelerate state on one CPU thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.helpers import DEMO_RECIPE, TINY


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def train_inproc(monkeypatch, tmp_path):
    """`train_inproc(*overrides, config=...)` runs train.run.train here and returns its RunResult.

    Outputs go under tmp_path/runs; the demo recipe with TINY sizes is the default base.
    """
    from core.config import load_config
    from train.cli import TrainJob
    from train.run import train

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def _run(*overrides: str, config: Path | None = DEMO_RECIPE, tiny: bool = True):
        base = TINY if tiny else ["data.num_workers=0"]
        cfg = load_config(config, [f"run.output_dir={tmp_path / 'runs'}", *base, *overrides])
        _reset_accelerate()
        try:
            return train(TrainJob(cfg, Path(config).stem if config else "run"))
        finally:
            _reset_accelerate()

    yield _run
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_root(tmp_path_factory) -> Path:
    """4 classes × (train 6, valid 3), ~36 px, no test/ split (so runs skip the test report). Read-only."""
    from core.demo_data import make_demo_dataset

    return make_demo_dataset(
        tmp_path_factory.mktemp("small"), num_classes=4, per_split={"train": 6, "valid": 3}, size=36, seed=1
    )
