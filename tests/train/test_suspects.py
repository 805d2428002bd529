"""suspects.csv / suspects.png: a real run with planted wrong labels ranks them near the top."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from train.suspects import COLUMNS, SUSPECTS_CSV, SUSPECTS_PNG


def flip_labels(root: Path, per_class: int) -> set[str]:
    """Move `per_class` training images of each class into the next class's folder; their new paths."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    moves = [  # planned before any move, so no image is flipped twice
        (src, root / "train" / classes[(k + 1) % len(classes)] / f"flipped_{name}_{src.name}")
        for k, name in enumerate(classes)
        for src in sorted((root / "train" / name).iterdir())[:per_class]
    ]
    for src, dst in moves:
        src.rename(dst)
    return {str(dst.resolve()) for _, dst in moves}


def test_flipped_training_labels_rank_near_the_top_of_suspects(train_inproc, tmp_path):
    from core.demo_data import make_demo_dataset

    root = make_demo_dataset(
        tmp_path / "data", num_classes=4, per_split={"train": 20, "valid": 5}, size=36, seed=3
    )
    flipped = flip_labels(root, per_class=2)  # 8 of 80 training images carry a wrong label
    result = train_inproc(f"data.root={root}", "model.arch=cifar_cnn", "train.epochs=3")
    assert result.exit_code == 0

    with open(result.run_dir / SUSPECTS_CSV, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert len(rows) == 100  # every train and valid image, scored once
    assert {r["split"] for r in rows} == {"train", "valid"}
    assert sum(r["split"] == "valid" for r in rows) == 20
    probs = [float(r["prob_given"]) for r in rows]
    assert probs == sorted(probs)  # strongest disagreement first
    assert all(0.0 <= float(r["prob_predicted"]) <= 1.0 for r in rows)

    ranks = [i for i, r in enumerate(rows) if str(Path(r["path"]).resolve()) in flipped]
    assert len(ranks) == len(flipped)
    for r in rows:  # the given label is the folder the file sits in now
        if str(Path(r["path"]).resolve()) in flipped:
            assert r["given_label"] == Path(r["path"]).parent.name
    others = [i for i in range(len(rows)) if i not in set(ranks)]
    # A random ranking puts ~25% of the flipped images in the top quarter, and both medians near 50.
    assert sum(i < len(rows) // 4 for i in ranks) >= len(flipped) // 2, ranks
    assert statistics.median(ranks) < statistics.median(others) - 20, ranks

    png = result.run_dir / SUSPECTS_PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
