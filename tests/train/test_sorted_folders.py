"""The sort command's output is training input: its class folders split and train; its queues are no classes."""

from __future__ import annotations

import csv
import json

from core.bundle import load_bundle
from serve.sort import main as sort_main
from tests.serve.helpers import image_tree
from train.split import main as split_main


def test_sorted_folders_split_and_train_without_the_review_and_error_queues(tmp_path, train_inproc):
    inbox = tmp_path / "inbox"
    rels = image_tree(inbox, {"a": 8, "b": 8})
    preds = tmp_path / "p.csv"
    with open(preds, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "status", "label", "prob", "accepted", "error"])
        for i, rel in enumerate(rels):
            status = "error" if i == 0 else "ok"
            w.writerow([rel, status, rel.split("/")[0], 0.9, "false" if i % 5 == 1 else "true", ""])
    (tmp_path / "p.csv.meta.json").write_text(json.dumps({"inputs": [str(inbox)], "cwd": str(tmp_path)}))
    assert sort_main([str(preds), "--to", str(tmp_path / "sorted")]) == 0
    assert (tmp_path / "sorted/_review").is_dir() and (tmp_path / "sorted/_errors").is_dir()

    assert split_main([str(tmp_path / "sorted"), str(tmp_path / "data"), "--ratios", "0.5", "0.5"]) == 0
    assert sorted(p.name for p in (tmp_path / "data/train").iterdir()) == ["a", "b"]
    result = train_inproc(f"data.root={tmp_path / 'data'}", "train.epochs=1")
    assert result.exit_code == 0
    _, record = load_bundle(result.run_dir / "best")
    assert list(record.classes) == ["a", "b"]
