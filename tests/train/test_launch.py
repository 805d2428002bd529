"""The real entry point under `accelerate launch` on CPU: the demo recipe end to end, and exact 2-process validation."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from core.bundle import load_bundle, read_record
from core.demo_data import make_demo_dataset
from core.errors import UserError
from core.images import decode_image
from core.preprocess import WithPreprocessing, eval_transform
from tests.launchers import accelerate_launch, free_port, multi_process_flags
from tests.proctree import run_tree
from tests.train.helpers import CONFIGS, DEMO_RECIPE, MAIN, subprocess_env

# A launch here takes ~20 s alone and up to ~65 s on the loaded 2-core CI box; a hang fails at the deadline.
DEADLINE_S = 240

RUN_FILES = [
    "best/model.safetensors",
    "best/bundle.json",
    "last/trainer_state.json",
    "last/model.safetensors",
    "last/optimizer.bin",
    "last/scheduler.bin",
    "train_batch.png",
    "config.yaml",
    "metrics.csv",
    "curves.png",
    "test_metrics.json",
    "per_class.csv",
    "confusion_matrix.png",
    "predictions.png",
]


def _launch(tmp_path, processes: int, *overrides: str) -> subprocess.CompletedProcess:
    # one process: the simple CPU launcher; more: torchrun, a gloo group on the CPU (tests/launchers.py)
    hardware = (
        ["--config_file", str(CONFIGS / "accelerate" / "cpu.yaml"), "--cpu", "--num_processes", "1"]
        + ["--main_process_port", str(free_port())]
        if processes == 1
        else multi_process_flags(processes)
    )
    cmd = accelerate_launch(
        *hardware,
        str(MAIN),
        "--config",
        str(DEMO_RECIPE),
        f"run.output_dir={tmp_path / 'runs'}",
        "data.num_workers=0",
        *overrides,
    )
    proc = run_tree(cmd, DEADLINE_S, cwd=tmp_path, env=subprocess_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{processes} process(es) on cpu" in proc.stdout
    assert "terminate called" not in proc.stderr  # a gloo group left alive at exit aborts the process
    return proc


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_root):
    """The demo recipe as shipped (resnet18, 64 px), 2 epochs on a copy of the demo data, one CPU process."""
    tmp = tmp_path_factory.mktemp("demo_run")
    root = shutil.copytree(demo_root, tmp / "data")
    _launch(tmp, 1, f"data.root={root}", "train.epochs=2", "run.name=demo")
    return tmp / "runs" / "demo", root


@pytest.mark.slow
def test_demo_recipe_learns_well_above_chance_in_two_epochs(demo_run):
    run_dir, _ = demo_run
    record = read_record(run_dir / "best")
    assert record.metrics["valid_acc"] >= 0.7  # 4 classes: chance is 0.25
    assert json.loads((run_dir / "test_metrics.json").read_text())["accuracy"] >= 0.6


@pytest.mark.slow
def test_demo_run_writes_every_output_file(demo_run):
    run_dir, _ = demo_run
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    assert not missing
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "valid_loss",
        "valid_acc",
        "valid_macro_f1",
        "lr",  # 4 classes: no top5
        "images_per_s",
        "epoch_seconds",
    ]
    assert not (run_dir / "bad_files.txt").exists()  # written only when some image was unreadable


@pytest.mark.slow
def test_demo_bundle_carries_labels_preprocessing_and_lineage(demo_run):
    run_dir, root = demo_run
    record = read_record(run_dir / "best")
    assert record.classes == ["1", "2", "3", "4"]
    assert record.display_names == ["circle", "square", "triangle", "cross"]
    assert (record.preprocess.resize, record.preprocess.crop) == (73, 64)
    ds = record.lineage["dataset"]
    assert ds["train_dir"] == str(root / "train") and ds["valid_dir"] == str(root / "valid")
    assert ds["num_files"] == {"train": 48, "valid": 20, "test": 16}
    assert record.lineage["config_hash"] and "epoch" in record.metrics


def _single_process_validation(bundle_dir, valid_dir):
    """Plain one-process evaluation of a bundle on a folder, independent of the trainer's code."""
    model, record = load_bundle(bundle_dir)
    net = WithPreprocessing(model, record.preprocess).eval()
    transform = eval_transform(record.preprocess)
    images, labels = [], []
    for label, cls in enumerate(record.classes):
        for path in sorted((valid_dir / cls).iterdir()):
            images.append(transform(decode_image(path)))
            labels.append(label)
    with torch.no_grad():
        logits = net(torch.stack(images))
    target = torch.tensor(labels)
    return len(labels), (logits.argmax(1) == target).sum().item(), F.cross_entropy(logits, target).item()


@pytest.mark.slow
def test_two_process_validation_counts_every_image_once_like_one_process(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_classes=3, per_split={"train": 4, "valid": 5}, size=36)
    _launch(
        tmp_path,
        2,
        f"data.root={root}",
        "run.name=ddp",
        "train.epochs=1",
        "train.batch_size=4",
        "train.eval_batch_size=4",
        "preprocess.resize=36",
        "preprocess.crop=32",
    )
    metrics = read_record(tmp_path / "runs" / "ddp" / "best").metrics
    n, correct, loss = _single_process_validation(tmp_path / "runs" / "ddp" / "best", root / "valid")
    assert n == 15  # odd: the two shards are uneven and the last batch is padded
    assert metrics["valid_n"] == n
    assert metrics["valid_acc"] == correct / n
    assert np.isclose(metrics["valid_loss"], loss, atol=1e-5)


def test_training_destroys_the_process_group_also_when_it_fails(tmp_path, train_inproc):
    """A launcher's group must not outlive main(): left to interpreter exit, gloo aborts the process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(UserError):
            train_inproc(f"data.root={tmp_path / 'no_such_data'}")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("entry", [[str(MAIN)], ["-m", "train.main"]], ids=["script", "module"])
def test_a_config_error_under_accelerate_launch_quiet_is_exactly_one_line(tmp_path, entry):
    """Both launch forms reach our CLI; --quiet keeps the launcher from repeating the error with a traceback."""
    cmd = accelerate_launch(
        "--quiet", "--config_file", str(CONFIGS / "accelerate" / "cpu.yaml"), *entry, "train.epoch=3"
    )
    proc = run_tree(cmd, DEADLINE_S, cwd=tmp_path, env=subprocess_env(tmp_path))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'train.epoch'; did you mean 'train.epochs'?"
    ], proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists()
