"""Shared fixtures: tiny demo data and tiny bundles made in tmp_path; GPU tests skip cleanly without CUDA."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.bundle import BundleRecord, save_bundle  # noqa: E402
from core.demo_data import make_demo_dataset  # noqa: E402
from core.models import HeadSpec, build_model  # noqa: E402
from core.preprocess import EvalSpec  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """4 classes × (train 12, valid 5, test 4) images, 48 px-ish, JPEG and PNG. Read-only for tests."""
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo"),
        num_classes=4,
        per_split={"train": 12, "valid": 5, "test": 4},
        size=48,
        seed=0,
    )


@pytest.fixture
def make_bundle(tmp_path):
    """Factory: an untrained but deterministic bundle (arch, crop) saved under tmp_path; returns its folder."""

    def _make(
        arch: str = "resnet18",
        crop: int = 32,
        classes: list[str] | None = None,
        display_names: list[str] | None = None,
        name: str = "best",
        seed: int = 0,
    ) -> Path:
        classes = classes or ["1", "2", "3", "4"]
        torch.manual_seed(seed)
        model = build_model(arch, len(classes), HeadSpec(), pretrained="none").eval()
        record = BundleRecord(
            arch=arch,
            classes=classes,
            display_names=display_names or [],
            preprocess=EvalSpec(resize=round(crop * 8 / 7), crop=crop),
            metrics={"valid_acc": 0.0},
        )
        return save_bundle(tmp_path / name, model, record)

    return _make
