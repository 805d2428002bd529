"""Whole runs with the real-data options: exact resume with the balanced sampler, class-weighted loss,
MixUp/CutMix and EMA all on; a last batch of one image; what the run prints and records."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from safetensors.torch import load_file

from core.bundle import read_record
from tests.train.helpers import SETUP
from train.signals import TEST_SIGTERM_ENV

RECIPE = [
    "data.balance=sampler",
    "train.ema_decay=0.8",
    "augment.mixup_alpha=0.4",
    "augment.cutmix_alpha=1.0",
    "train.label_smoothing=0.1",
    "train.best_metric=valid_macro_f1",
]


def _ema_state(run_dir):
    [path] = (run_dir / "last").glob("custom_checkpoint_*.pkl")
    return torch.load(path, weights_only=False)["module"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_resumed_run_with_sampler_mixing_and_ema_equals_an_uninterrupted_one_bit_for_bit(
    train_inproc, small_root, monkeypatch
):
    monkeypatch.setenv(TEST_SIGTERM_ENV, "12")  # all 8 batches of epoch 1 and 4 of epoch 2
    cut = train_inproc(f"data.root={small_root}", "run.name=cut", *SETUP, *RECIPE)
    assert cut.exit_code == 143 and (cut.state.epoch, cut.state.step) == (1, 4)
    monkeypatch.delenv(TEST_SIGTERM_ENV)
    resumed = train_inproc(f"data.root={small_root}", "run.name=cut", "train.resume=auto", *SETUP, *RECIPE)
    straight = train_inproc(f"data.root={small_root}", "run.name=straight", *SETUP, *RECIPE)
    assert resumed.exit_code == straight.exit_code == 0
    a, b = resumed.run_dir, straight.run_dir
    assert _same(
        load_file(str(a / "last" / "model.safetensors")), load_file(str(b / "last" / "model.safetensors"))
    )
    assert _same(_ema_state(a), _ema_state(b))
    assert _same(
        load_file(str(a / "best" / "model.safetensors")), load_file(str(b / "best" / "model.safetensors"))
    )
    assert resumed.state.rows[1]["valid_macro_f1"] == straight.state.rows[1]["valid_macro_f1"]
    assert resumed.state.rows[1]["train_loss"] == pytest.approx(
        straight.state.rows[1]["train_loss"], abs=1e-6
    )


@pytest.mark.parametrize("balance", ["none", "sampler"])
def test_m21_a_last_batch_of_one_image_never_reaches_batchnorm(train_inproc, small_root, balance):
    # resnet18 (BatchNorm) at 32 px; 24 images in batches of 23 leave one image, which would fail with
    # "Expected more than 1 value per channel when training"
    result = train_inproc(
        f"data.root={small_root}", "train.epochs=1", "train.batch_size=23", f"data.balance={balance}"
    )
    assert result.exit_code == 0 and len(result.state.rows) == 1


def _imbalanced(small_root, tmp_path):
    """small_root with class 1 cut to 1 training image against 6 (6×)."""
    root = shutil.copytree(small_root, tmp_path / "imbalanced")
    for path in sorted((root / "train" / "1").iterdir())[1:]:
        path.unlink()
    return root


def test_the_run_says_the_classes_are_imbalanced_and_records_macro_f1_and_ema(
    train_inproc, small_root, tmp_path, capsys
):
    root = _imbalanced(small_root, tmp_path)
    result = train_inproc(
        f"data.root={root}",
        "model.arch=cifar_cnn",
        "train.epochs=1",
        "train.ema_decay=0.5",
        "train.batch_size=5",
        "data.balance=loss",
    )
    out = capsys.readouterr().out
    [line] = [x for x in out.splitlines() if "imbalanced" in x]
    assert "has 6 images" in line and "1 (6.0×)" in line and "data.balance=loss" in line
    assert "macro F1" in out
    with open(result.run_dir / "metrics.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["valid_macro_f1"]) == pytest.approx(result.state.rows[0]["valid_macro_f1"])
    ema = read_record(result.run_dir / "best").lineage["ema"]
    assert ema["decay"] == 0.5 and ema["updates"] == 4  # 19 images in batches of 5: 4 optimizer steps
