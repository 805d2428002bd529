"""The data audit: planted copies across splits counted exactly, every pair listed, cached hashes, the policy."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bundle import BundleRecord, read_record
from core.errors import UserError
from core.preprocess import EvalSpec
from tests.train.helpers import DEMO_RECIPE
from train import audit, image_hash
from train.audit import Item, audit_items
from train.image_hash import near_pairs


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth image with structure (random 8x6 colour field, upsampled): what a dHash needs to see."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )


def make_splits(root: Path, per_split: int = 6) -> Path:
    """root/{train,valid,test}/{a,b}/: distinct photos, no copies yet."""
    seed = 0
    for split in ("train", "valid", "test"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_split):
                photo(seed).save(root / split / cls / f"{i}.jpg", quality=90)
                seed += 1
    return root


def plant(root: Path) -> None:
    """3 exact train→test copies, 1 exact train→valid, 2 near train→test (resized, re-encoded as PNG),
    1 near valid→test, and one exact train→test copy filed under the other class (a label conflict)."""
    for i in range(3):
        shutil.copy(root / "train/a" / f"{i}.jpg", root / "test/a" / f"copy{i}.jpg")
    shutil.copy(root / "train/b/0.jpg", root / "valid/b/copy.jpg")
    img = Image.open(root / "train/a/3.jpg")
    img.resize((img.width * 2, img.height * 2)).save(root / "test/a/big.jpg", quality=75)
    img = Image.open(root / "train/b/1.jpg")
    img.resize((img.width // 2, img.height // 2)).save(root / "test/b/small.png")
    Image.open(root / "valid/a/0.jpg").save(root / "test/a/from_valid.png")
    shutil.copy(root / "train/b/2.jpg", root / "test/a/wrong_label.jpg")


def items(root: Path) -> list[Item]:
    return [
        Item(split, str(p), p.parent.name)
        for split in ("train", "valid", "test")
        for p in sorted((root / split).rglob("*.*"))
    ]


@pytest.fixture
def planted(tmp_path) -> Path:
    root = make_splits(tmp_path / "data")
    plant(root)
    return root


def test_planted_copies_across_splits_are_counted_exactly(planted, tmp_path):
    counts = audit_items(items(planted), tmp_path / "run", "warn", say=lambda _: None)
    assert counts["exact"] == {"train-valid": 1, "train-test": 4, "valid-test": 0}
    assert counts["near"] == {"train-valid": 0, "train-test": 2, "valid-test": 1}
    assert counts["conflicting_labels"] == 1
    assert counts["leaked_images"] == {"valid": 1, "test": 7}
    report = json.loads((tmp_path / "run" / audit.AUDIT_FILE).read_text())
    assert report["exact"] == counts["exact"] and report["near"] == counts["near"]
    assert report["conflicting_labels"] == 1 and report["examples"]


def test_every_pair_is_listed_in_the_csv_with_both_paths_labels_and_distance(planted, tmp_path):
    audit_items(items(planted), tmp_path / "run", "warn", say=lambda _: None)
    with open(tmp_path / "run" / audit.PAIRS_FILE, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    assert list(rows[0]) == list(audit.PAIR_COLUMNS)
    conflict = next(r for r in rows if r["path_b"].endswith("wrong_label.jpg"))
    assert conflict["kind"] == "exact" and conflict["split_a"] == "train" and conflict["label_a"] == "b"
    assert conflict["label_b"] == "a" and conflict["path_a"].endswith("train/b/2.jpg")
    near = {Path(r["path_b"]).name: r for r in rows if r["kind"] == "near"}
    assert set(near) == {"big.jpg", "small.png", "from_valid.png"}
    assert all(0 <= int(r["distance"]) <= image_hash.NEAR_DISTANCE for r in near.values())
    assert near["from_valid.png"]["split_a"] == "valid"


def test_the_line_says_the_counts_and_names_the_pairs_file(planted, tmp_path):
    lines = []
    audit_items(items(planted), tmp_path / "run", "warn", say=lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: data audit")
    assert "train-test 4" in lines[0] and "conflicting labels 1" in lines[0] and audit.PAIRS_FILE in lines[0]


def test_clean_splits_count_zero_and_say_no_warning(tmp_path):
    lines = []
    counts = audit_items(items(make_splits(tmp_path / "data")), tmp_path / "run", "error", say=lines.append)
    assert counts["exact"] == counts["near"] == {"train-valid": 0, "train-test": 0, "valid-test": 0}
    assert counts["conflicting_labels"] == 0 and not lines[0].startswith("warning")


def test_error_policy_stops_naming_the_pairs_file_after_writing_it(planted, tmp_path):
    with pytest.raises(UserError, match=audit.PAIRS_FILE):
        audit_items(items(planted), tmp_path / "run", "error", say=lambda _: None)
    assert (tmp_path / "run" / audit.PAIRS_FILE).is_file() and (tmp_path / "run" / audit.AUDIT_FILE).is_file()


def test_copies_inside_one_split_are_not_leaks_but_label_conflicts_count(tmp_path):
    root = make_splits(tmp_path / "data")
    shutil.copy(root / "train/a/0.jpg", root / "train/a/dup.jpg")
    shutil.copy(root / "train/a/1.jpg", root / "train/b/mislabeled.jpg")
    counts = audit_items(items(root), tmp_path / "run", "error", say=lambda _: None)  # no leak: no error
    assert sum(counts["exact"].values()) == 0 and counts["conflicting_labels"] == 1
    report = json.loads((tmp_path / "run" / audit.AUDIT_FILE).read_text())
    assert report["within_split"]["exact"]["train"] == 2


def test_flat_images_are_matched_by_bytes_only(tmp_path):
    """A flat colour has an all-zero dHash: two different flat images are not near copies."""
    paths = []
    for i, colour in enumerate([(10, 20, 30), (200, 100, 0)]):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    prints, _ = image_hash.fingerprints(paths)
    assert prints[0].dhash == prints[1].dhash == 0
    assert near_pairs([p.dhash for p in prints]) == {}


def test_a_resumed_audit_reads_the_cache_and_rehashes_only_changed_files(planted, tmp_path, monkeypatch):
    its = items(planted)
    first = audit_items(its, tmp_path / "run", "warn", say=lambda _: None)
    calls = []
    real = image_hash.fingerprint
    monkeypatch.setattr(image_hash, "fingerprint", lambda p: calls.append(p) or real(p))
    lines = []
    assert audit_items(its, tmp_path / "run", "warn", say=lines.append) == first
    assert calls == [] and f"{len(its)} cached" in lines[0]
    changed = planted / "test/a/copy0.jpg"
    photo(999).save(changed)  # no longer a copy: its size and mtime change
    second = audit_items(its, tmp_path / "run", "warn", say=lambda _: None)
    assert calls == [str(changed)]
    assert second["exact"]["train-test"] == first["exact"]["train-test"] - 1


def test_a_damaged_cache_only_costs_a_rehash(planted, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / audit.CACHE_FILE).write_text("{not json")
    counts = audit_items(items(planted), tmp_path / "run", "warn", say=lambda _: None)
    assert counts["exact"]["train-test"] == 4


def test_near_pairs_match_a_brute_force_search():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(400)]
    for k in range(60):  # plant neighbours at distance 0..6 (beyond 4 must not match)
        h = hashes[k]
        for bit in rng.sample(range(64), k % 7):
            h ^= 1 << bit
        hashes.append(h)
    hashes += [hashes[5], None, 0]
    informative = [image_hash.informative(h) for h in hashes]
    brute = {
        (i, j): (hashes[i] ^ hashes[j]).bit_count()
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if informative[i] and informative[j] and (hashes[i] ^ hashes[j]).bit_count() <= 4
    }
    assert near_pairs(hashes) == brute
    assert len(brute) > 40


def test_union_find_joins_chains_into_one_group():
    assert image_hash.groups(6, [(0, 3), (3, 5), (1, 2)]) == [0, 1, 1, 0, 4, 0]


def test_the_bundle_refuses_negative_audit_counts(tmp_path):
    spec = EvalSpec(36, 32, "bilinear", (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    good = BundleRecord("cifar_cnn", ["a", "b"], spec, lineage={"data_audit": {"exact": {"train-test": 2}}})
    d = good.to_dict()
    assert BundleRecord.from_dict(d).lineage["data_audit"]["exact"]["train-test"] == 2
    d["lineage"]["data_audit"]["exact"]["train-test"] = -1
    with pytest.raises(UserError, match="malformed.*data_audit"):
        BundleRecord.from_dict(d)
    d["lineage"]["data_audit"] = None  # the audit was off
    assert BundleRecord.from_dict(d).lineage["data_audit"] is None


# ─── in a training run ─────────────────────────────────────────────────────────────────────────


def test_a_run_writes_the_audit_and_records_the_counts_in_the_bundle(planted, train_inproc):
    result = train_inproc(f"data.root={planted}", "train.epochs=1", "model.arch=cifar_cnn", "run.name=aud")
    assert (result.run_dir / audit.AUDIT_FILE).is_file() and (result.run_dir / audit.PAIRS_FILE).is_file()
    lineage = read_record(result.run_dir / "best").lineage
    assert lineage["data_audit"]["exact"] == {"train-valid": 1, "train-test": 4, "valid-test": 0}
    assert lineage["data_audit"]["near"]["train-test"] == 2


def test_leakage_error_stops_before_training_with_exit_2(planted, tmp_path, monkeypatch, capsys):
    from tests.train.conftest import _reset_accelerate
    from train.main import main

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    _reset_accelerate()
    try:
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "--config",
                    str(DEMO_RECIPE),
                    f"data.root={planted}",
                    f"run.output_dir={tmp_path / 'runs'}",
                    "run.name=stop",
                    "data.leakage=error",
                    "data.num_workers=0",
                ]
            )
    finally:
        _reset_accelerate()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and audit.PAIRS_FILE in err[0]
    assert not (tmp_path / "runs" / "stop" / "best").exists()


def test_leakage_off_skips_the_audit(planted, train_inproc):
    result = train_inproc(
        f"data.root={planted}",
        "train.epochs=1",
        "model.arch=cifar_cnn",
        "run.name=noaudit",
        "data.leakage='off'",
    )
    assert not (result.run_dir / audit.AUDIT_FILE).exists()
    assert read_record(result.run_dir / "best").lineage["data_audit"] is None
