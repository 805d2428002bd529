"""M22: a class folder whose name is not valid UTF-8 trains: every figure is written, the name round-trips."""

from __future__ import annotations

import json
import os
import shutil

from core.bundle import RECORD_FILE

NAME = os.fsdecode(b"caf\xe9")  # what os.listdir gives for the bytes b"caf\xe9" (PEP 383)


def test_m22_non_utf8_class_name_trains_and_round_trips(small_root, tmp_path, train_inproc):
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    shutil.copytree(root / "valid", root / "test")  # the test report draws the confusion matrix and gallery
    for split in ("train", "valid", "test"):
        first = sorted(p for p in (root / split).iterdir() if p.is_dir())[0]
        first.rename(root / split / NAME)
    result = train_inproc(f"data.root={root}", "model.arch=cifar_cnn", "train.epochs=1")
    run = result.run_dir
    pngs = {p.name for p in run.rglob("*.png")}
    assert {"train_batch.png", "curves.png", "predictions.png"} <= pngs, pngs
    assert (run / "per_class.csv").read_bytes().count(b"caf\xe9") >= 1  # the exact folder bytes
    assert any("confusion" in name for name in pngs), pngs
    record = json.loads((run / "best" / RECORD_FILE).read_text())
    assert NAME in record["classes"]  # exact: serve maps the name back to the folder bytes
    assert os.fsencode(NAME) == b"caf\xe9"
