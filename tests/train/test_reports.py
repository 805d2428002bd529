"""What a training run reports: top-5 only where it means something, and which model scored which test folder."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch
from accelerate import Accelerator

from train.engine import _summary
from train.evaluate import evaluate


def _logits_model(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, classes))


@pytest.mark.parametrize("classes, has_top5", [(3, False), (5, False), (6, True)])
def test_validation_top5_exists_only_with_more_than_five_classes(classes, has_top5, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    torch.manual_seed(0)
    batches = [(torch.rand(4, 4), torch.tensor([0, 1, 2, 0]), [])]
    result = evaluate(Accelerator(cpu=True), _logits_model(classes), batches, lambda x: x)
    assert (result.top5 is not None) == has_top5
    assert ("valid_top5" in result.top5_metric("valid")) == has_top5


def test_the_epoch_line_leaves_top5_out_when_the_row_has_none():
    row = {
        "train_loss": 1.0,
        "train_acc": 0.5,
        "valid_loss": 0.9,
        "valid_acc": 0.6,
        "lr": 1e-3,
        "images_per_s": 100.0,
        "epoch_seconds": 2.0,
    }
    assert "top5" not in _summary(0, 3, row, 20, True)
    assert "top5 0.900" in _summary(0, 3, dict(row, valid_top5=0.9), 20, True)


def test_a_run_records_its_bundle_and_test_folder_and_skips_a_meaningless_top5(train_inproc, demo_root):
    result = train_inproc(f"data.root={demo_root}", "train.epochs=1", "model.arch=cifar_cnn", "run.name=rep")
    run = result.run_dir
    with open(run / "metrics.csv", newline="") as fh:
        assert "valid_top5" not in next(csv.reader(fh))  # 4 classes: top-5 is always 1.0
    metrics = json.loads((run / "test_metrics.json").read_text())
    weights = (run / "best" / "model.safetensors").read_bytes()
    assert metrics["model"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert metrics["data"] == {"folder": str((demo_root / "test").resolve()), "images": 16}
    assert "top5" not in metrics and "most_confused" in metrics
