"""Every recipe in configs/ starts training on a small folder of the right shape (and CIFAR-10 from its pickles)."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import yaml
from torchvision.datasets import CIFAR10

from core.bundle import read_record
from core.config import load_config
from core.demo_data import make_demo_dataset
from core.errors import UserError
from tests.train.helpers import CONFIGS

CHEAP = [
    "model.pretrained=none",
    "train.epochs=1",
    "train.batch_size=2",
    "preprocess.resize=36",
    "preprocess.crop=32",
]
SEED_RECIPES = {  # recipe → (validation folder name, class folder names, extra overrides)
    "flowers102_densenet161": ("valid", ["1", "10", "2"], []),
    # VGG's 25088×4096 head alone is 100M parameters (1.2 GB of checkpoints): a narrower one keeps this fast.
    "flowers102_vgg16": ("valid", ["1", "10", "2"], ["model.head.hidden=[64]"]),
    "caltech101_resnet50": ("validation", ["airplanes", "butterfly", "camera"], []),
}


def _tutorial_folder(root, valid_name, classes):
    """Tutorial layout: train/ and valid|validation/ with the given class folders, one image per class each."""
    make_demo_dataset(root, num_classes=len(classes), per_split={"train": 1, "valid": 1}, size=36)
    (root / "valid").rename(root / valid_name)
    for split in ("train", valid_name):
        for i, name in enumerate(classes):
            (root / split / str(i + 1)).rename(root / split / f"_{name}")
        for name in classes:
            (root / split / f"_{name}").rename(root / split / name)
    return root


@pytest.mark.parametrize("recipe", sorted(SEED_RECIPES))
def test_seed_recipe_builds_its_model_and_trains_one_step(recipe, tmp_path, train_inproc):
    valid_name, classes, extra = SEED_RECIPES[recipe]
    root = _tutorial_folder(tmp_path / "data", valid_name, classes)
    path = CONFIGS / f"{recipe}.yaml"
    cfg = load_config(path, extra)
    result = train_inproc(f"data.root={root}", *CHEAP, *extra, config=path, tiny=False)
    record = read_record(result.run_dir / "best")
    assert result.exit_code == 0 and len(result.state.rows) == 1
    assert (record.arch, record.head.hidden, record.head.dropout) == (
        cfg.model.arch,
        cfg.model.head.hidden,
        cfg.model.head.dropout,
    )
    assert record.classes == sorted(classes)
    assert result.state.rows[0]["lr"] == pytest.approx(cfg.train.optimizer.lr)  # constant schedule, recipe lr


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_pickles(root, monkeypatch, per_batch: int = 2, n_test: int = 5):
    """A tiny CIFAR-10 in its own pickle format; torchvision's md5 table is pointed at these files."""
    base = root / CIFAR10.base_folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, obj: dict) -> list[str]:
        (base / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((base / name).read_bytes()).hexdigest()]

    def batch(n: int, start: int) -> dict:
        return {
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            "labels": [(start + i) % 10 for i in range(n)],
        }

    train = [dump(f"data_batch_{i}", batch(per_batch, i * per_batch)) for i in range(1, 6)]
    test = [dump("test_batch", batch(n_test, 0))]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": CIFAR_NAMES})
    monkeypatch.setattr(CIFAR10, "train_list", train)
    monkeypatch.setattr(CIFAR10, "test_list", test)
    monkeypatch.setattr(CIFAR10, "meta", {"filename": meta_name, "key": "label_names", "md5": meta_md5})
    return root


def test_cifar10_recipe_trains_on_cifar_pickles_and_evaluates_the_test_split(
    tmp_path, monkeypatch, train_inproc
):
    root = _cifar_pickles(tmp_path / "cifar", monkeypatch)
    path = CONFIGS / "cifar10_cnn.yaml"
    result = train_inproc(
        f"data.root={root}", "data.download=false", "train.epochs=1", config=path, tiny=False
    )
    record = read_record(result.run_dir / "best")
    assert record.classes == CIFAR_NAMES and record.metrics["valid_n"] == 5
    assert record.lineage["dataset"]["source"] == "cifar10"
    assert record.lineage["dataset"]["num_files"] == {"train": 10, "valid": 5, "test": 5}
    assert json.loads((result.run_dir / "test_metrics.json").read_text())["n"] == 5


def test_cifar10_missing_without_download_names_the_folder(tmp_path, train_inproc):
    with pytest.raises(UserError, match=r"CIFAR-10 not found.*cifar-10-batches-py.*data.download"):
        train_inproc(
            f"data.root={tmp_path / 'nothing'}",
            "data.download=false",
            config=CONFIGS / "cifar10_cnn.yaml",
            tiny=False,
        )


def test_accelerate_hardware_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {
        "single_gpu": ("NO", 1, False),
        "multi_gpu_8": ("MULTI_GPU", 8, False),
        "cpu": ("NO", 1, True),
    }
    for name, (kind, procs, cpu) in expected.items():
        c = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
        assert (c.distributed_type.value, c.num_processes, c.use_cpu) == (kind, procs, cpu)
    assert (
        yaml.safe_load((CONFIGS / "accelerate" / "multi_gpu_8.yaml").read_text())["mixed_precision"] == "bf16"
    )
