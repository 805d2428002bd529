"""M23: a split where every image is unreadable is refused before training, naming the split and the fix."""

from __future__ import annotations

import shutil
import time

import pytest

from core.errors import UserError
from train.decodable import spread


@pytest.mark.parametrize("split", ["valid", "test"])
def test_m23_unreadable_split_fails_up_front(split, small_root, tmp_path, train_inproc):
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    if split == "test":
        shutil.copytree(root / "valid", root / "test")
    for f in (root / split).rglob("*.*"):
        f.write_bytes(b"not an image")
    start = time.monotonic()
    with pytest.raises(UserError) as exc:
        train_inproc(f"data.root={root}", "model.arch=cifar_cnn", "train.epochs=1")
    msg = str(exc.value)
    assert f"from the {split} split" in msg and str(root / split) in msg and "replace or remove" in msg
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("metrics.csv"))
    assert time.monotonic() - start < 60


def test_m23_sample_is_spread_and_bounded():
    assert spread(3) == [0, 1, 2]
    picked = spread(1000)
    assert len(picked) == 16 and picked[0] == 0 and picked[-1] == 999
