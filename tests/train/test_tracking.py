"""run.log_with: Accelerate's trackers get the config, per-step and per-epoch numbers, and the figures."""

from __future__ import annotations

import pytest

from core.config import load_config
from core.errors import UserError
from train import tracking
from train.tracking import check_installed, flat_hparams


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def test_tensorboard_gets_steps_epochs_test_metrics_figures_and_the_config(train_inproc, small_root):
    pytest.importorskip("tensorboard")
    result = train_inproc(
        f"data.root={small_root}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.log_every=2",
        "run.log_with=tensorboard",
    )
    tb = result.run_dir / "tensorboard"
    ea = _events(tb)
    scalars = ea.Tags()["scalars"]
    # 24 images / batch 8 = 3 steps per epoch; a report after step 2 and step 3 of each epoch.
    assert [e.step for e in ea.Scalars("train/loss")] == [2, 3, 5, 6]
    assert [e.step for e in ea.Scalars("train/lr")] == [2, 3, 5, 6]
    assert [e.step for e in ea.Scalars("epoch/valid_acc")] == [3, 6]
    assert [e.value for e in ea.Scalars("epoch/valid_acc")] == pytest.approx(
        [r["valid_acc"] for r in result.state.rows]
    )
    assert {"epoch/train_loss", "epoch/valid_loss", "epoch/lr", "epoch/images_per_s"} <= set(scalars)
    assert [e.step for e in ea.Images("curves")] == [3, 6]
    hparams = list(tb.glob("*/hparams.yml"))
    assert len(hparams) == 1
    text = hparams[0].read_text()
    assert "train.optimizer.lr: 0.001" in text and "model.arch: resnet18" in text


def test_flat_hparams_keeps_scalars_and_writes_lists_and_null_as_text():
    assert flat_hparams({"a": {"b": 1, "c": [1, 2], "d": None}, "e": True}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "a.d": "None",
        "e": True,
    }


def test_a_tracker_that_is_not_installed_is_one_error_naming_the_install(monkeypatch):
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [])
    with pytest.raises(UserError, match=r"run.log_with: wandb is not installed.*pip install wandb"):
        check_installed(["wandb"])


def test_log_with_takes_one_name_a_list_or_none_and_refuses_typos():
    assert load_config(None, ["run.log_with=[tensorboard,wandb]"]).run.trackers() == ["tensorboard", "wandb"]
    assert load_config(None, ["run.log_with=tensorboard"]).run.trackers() == ["tensorboard"]
    assert load_config(None, []).run.trackers() == []
    with pytest.raises(UserError, match="did you mean 'tensorboard'"):
        load_config(None, ["run.log_with=tensorbord"])


def test_trackers_do_not_change_the_config_hash():
    assert load_config(None, ["run.log_with=tensorboard"]).hash() == load_config(None, []).hash()
