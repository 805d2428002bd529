"""Training's console output as a batch system keeps it, and the newcomer command run twice."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.train.helpers import DEMO_RECIPE, MAIN, REPO, TINY, subprocess_env

# 24 train images, batch 4 → 6 steps per epoch; log_every 4 → a line after steps 4 and 6.
RUN = [
    "train.epochs=2",
    "train.batch_size=4",
    *TINY[:-1],
    "train.log_every=4",
    "run.name=demo",
    "train.resume=auto",
]


def _train(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(MAIN),
            "--config",
            str(DEMO_RECIPE),
            *RUN,
            *extra,
            f"data.root={tmp_path / 'data'}",
            f"run.output_dir={tmp_path / 'runs'}",
        ],
        cwd=REPO,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    from core.demo_data import make_demo_dataset

    tmp = tmp_path_factory.mktemp("logs")
    make_demo_dataset(tmp / "data", num_classes=4, per_split={"train": 6, "valid": 3}, size=36, seed=1)
    return tmp, _train(tmp)


def test_piped_output_is_one_plain_line_per_log_every_steps(first_run):
    _, proc = first_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = [ln for ln in lines if " step " in ln]
    assert [ln.split("  ")[:2] for ln in steps] == [
        ["epoch 1/2", "step 4/6"],
        ["epoch 1/2", "step 6/6"],
        ["epoch 2/2", "step 4/6"],
        ["epoch 2/2", "step 6/6"],
    ]
    for ln in steps:
        for field in ("loss ", "acc ", "img/s ", "lr ", "eta "):
            assert field in ln, ln
    assert "(run " in steps[0] and "(run " not in steps[-1]  # the run ETA counts the epochs still to come
    assert sum(ln.startswith("epoch ") and " valid loss " in ln for ln in lines) == 2  # one summary per epoch


def test_the_same_command_again_says_the_run_is_finished_and_exits_0(first_run):
    tmp, first = first_run
    assert first.returncode == 0, first.stderr[-2000:]
    proc = _train(tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" not in proc.stdout
    assert f"run {tmp / 'runs' / 'demo'} is finished (2/2 epochs, best valid_acc " in proc.stdout
    assert "nothing to do" in proc.stdout and "epoch 3" not in proc.stdout
