"""data.decode: gpu through the real entry point: SIGTERM mid-epoch then resume gives the uninterrupted
weights, and 2 processes count every validation image exactly once (gather_for_metrics under prefetch)."""

from __future__ import annotations

import json

import pytest
import torch

from core.bundle import read_record
from core.demo_data import make_demo_dataset
from tests.launchers import cpu_processes
from tests.proctree import run_tree
from tests.train.helpers import DEMO_RECIPE, MAIN, SETUP, TINY, subprocess_env
from tests.train.test_gpu_train import _plain_valid_eval
from tests.train.test_launch import DEADLINE_S
from tests.train.test_resume import _start_and_terminate, _weights

pytestmark = pytest.mark.slow
GPU = ["data.decode=gpu", "model.arch=cifar_cnn"]


def test_gpu_decode_resume_after_sigterm_mid_epoch_matches_an_uninterrupted_run(
    tmp_path, small_root, train_inproc
):
    code, out, err = _start_and_terminate(tmp_path, small_root, GPU)
    log = out + err
    assert code == 143, log[-2000:]
    state = json.loads((tmp_path / "runs" / "cut" / "last" / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and 0 < state["step"] < 8, "the stop must land inside epoch 2"

    resumed = train_inproc(f"data.root={small_root}", "run.name=cut", "train.resume=auto", *SETUP, *GPU)
    straight = train_inproc(f"data.root={small_root}", "run.name=straight", *SETUP, *GPU)
    assert resumed.exit_code == straight.exit_code == 0
    a, b = _weights(resumed.run_dir), _weights(straight.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")
    for ra, rb in zip(resumed.state.rows, straight.state.rows, strict=True):
        assert {k: ra[k] for k in keys} == pytest.approx({k: rb[k] for k in keys}, abs=1e-6)


def test_gpu_decode_two_process_validation_counts_every_image_once(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_classes=3, per_split={"train": 4, "valid": 5}, size=36)
    # ACCELERATE_USE_CPU=1 (subprocess_env) makes the two workers a gloo group on the CPU
    cmd = cpu_processes(
        2,
        MAIN,
        "--config",
        str(DEMO_RECIPE),
        f"run.output_dir={tmp_path / 'runs'}",
        f"data.root={root}",
        "run.name=ddp",
        "train.epochs=1",
        "train.batch_size=4",
        "train.eval_batch_size=2",
        *TINY,
        *GPU,
    )
    proc = run_tree(cmd, DEADLINE_S, cwd=tmp_path, env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout and "data.decode gpu" in proc.stdout
    best = tmp_path / "runs" / "ddp" / "best"
    metrics = read_record(best).metrics
    n, correct, loss = _plain_valid_eval(best, root / "valid")
    assert n == 15  # 4 batches of 2 per rank: the last global batch holds 3 real images and 1 repeat
    assert metrics["valid_n"] == n
    assert metrics["valid_acc"] == correct / n
    assert metrics["valid_loss"] == pytest.approx(loss, abs=1e-5)
