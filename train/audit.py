"""The data audit before training: exact and near copies across train/valid/test, and copies with different labels.

Writes data_audit.json (counts + examples) and data_audit_pairs.csv (every pair, so a user can act on
it) in the run folder, prints one line, and returns the counts the bundle's lineage records.
`data.leakage`: warn (default) says so and trains; error stops before training (exit 2); off skips it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.fsio import write_csv_atomic, write_json_atomic
from train.image_hash import NEAR_DISTANCE, exact_pairs, fingerprints, near_pairs

AUDIT_FILE = "data_audit.json"
PAIRS_FILE = "data_audit_pairs.csv"
CACHE_FILE = "data_audit_cache.json"
SPLIT_ORDER = ("train", "valid", "test")
CROSS = ("train-valid", "train-test", "valid-test")
MAX_EXAMPLES = 20
PAIR_COLUMNS = ("kind", "split_a", "path_a", "label_a", "split_b", "path_b", "label_b", "distance")


@dataclass(frozen=True)
class Item:
    split: str
    path: str
    label: str


@dataclass(frozen=True)
class Pair:
    kind: str  # "exact": same bytes; "near": dHash within NEAR_DISTANCE bits, different bytes
    a: Item
    b: Item
    distance: int

    @property
    def splits(self) -> str:
        return f"{self.a.split}-{self.b.split}"

    def row(self) -> dict[str, Any]:
        a, b = self.a, self.b
        return dict(
            zip(PAIR_COLUMNS, (self.kind, a.split, a.path, a.label, b.split, b.path, b.label, self.distance))
        )


def find_pairs(items: Sequence[Item], cache_file: Path | None = None) -> tuple[list[Pair], int]:
    """(every exact or near pair, within and across splits, ordered train < valid < test; cache hits)."""
    prints, hits = fingerprints([it.path for it in items], cache_file)
    exact = set(exact_pairs([fp.digest for fp in prints]))
    near = {ij: d for ij, d in near_pairs([fp.dhash for fp in prints]).items() if ij not in exact}
    rank = {s: k for k, s in enumerate(SPLIT_ORDER)}

    def pair(kind: str, i: int, j: int, d: int) -> Pair:
        a, b = sorted((items[i], items[j]), key=lambda it: (rank.get(it.split, 9), it.path))
        return Pair(kind, a, b, d)

    pairs = [pair("exact", i, j, 0) for i, j in sorted(exact)]
    pairs += [pair("near", i, j, d) for (i, j), d in sorted(near.items())]
    return pairs, hits


def summarize(pairs: Sequence[Pair], n_images: int) -> dict[str, Any]:
    """data_audit.json: pair counts per split pair and kind, images leaked into valid/test, label conflicts."""
    counts = {kind: dict.fromkeys(CROSS, 0) for kind in ("exact", "near")}
    within = {kind: dict.fromkeys(SPLIT_ORDER, 0) for kind in ("exact", "near")}
    leaked: dict[str, set[str]] = {"valid": set(), "test": set()}
    for p in pairs:
        if p.a.split == p.b.split:
            within[p.kind][p.a.split] += 1
        else:
            counts[p.kind][p.splits] += 1
            leaked[p.b.split].add(
                p.b.path
            )  # the later split holds the copy of an image the model trains or selects on
    conflicts = [p for p in pairs if p.a.label != p.b.label]
    cross_first = sorted(pairs, key=lambda p: (p.a.split == p.b.split, p.a.label == p.b.label))
    return {
        **counts,
        "conflicting_labels": len(conflicts),
        "within_split": within,
        "leaked_images": {s: len(v) for s, v in leaked.items()},
        "images": n_images,
        "near_distance": NEAR_DISTANCE,
        "pairs_file": PAIRS_FILE,
        "examples": [p.row() for p in cross_first[:MAX_EXAMPLES]],
    }


def lineage_counts(report: dict[str, Any]) -> dict[str, Any]:
    """What the bundle's lineage keeps: the counts, not the examples."""
    return {
        "exact": dict(report["exact"]),
        "near": dict(report["near"]),
        "conflicting_labels": report["conflicting_labels"],
        "leaked_images": dict(report["leaked_images"]),
    }


def write_pairs_csv(pairs: Sequence[Pair], path: Path) -> None:
    write_csv_atomic(path, PAIR_COLUMNS, (p.row().values() for p in pairs))  # row(): PAIR_COLUMNS' order


def summary_line(report: dict[str, Any], seconds: float, hits: int) -> str:
    ex, near = report["exact"], report["near"]
    return (
        f"data audit ({report['images']} images, {hits} cached, {seconds:.1f} s): exact copies "
        + ", ".join(f"{k} {ex[k]}" for k in CROSS)
        + " | near copies "
        + ", ".join(f"{k} {near[k]}" for k in CROSS)
        + f" | conflicting labels {report['conflicting_labels']} → {PAIRS_FILE}"
    )


def leaks(report: dict[str, Any]) -> int:
    return sum(report["exact"].values()) + sum(report["near"].values())


def audit_items(items: Sequence[Item], run_dir: Path, policy: str, say=print) -> dict[str, Any]:
    """Audit, write the two files, say the line; raise UserError under `error` when splits share images."""
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs, hits = find_pairs(items, run_dir / CACHE_FILE)
    report = summarize(pairs, len(items))
    write_pairs_csv(pairs, run_dir / PAIRS_FILE)
    write_json_atomic(run_dir / AUDIT_FILE, report)
    n = leaks(report)
    warn = "warning: " if n or report["conflicting_labels"] else ""
    say(warn + summary_line(report, time.perf_counter() - start, hits))
    if n and policy == "error":
        raise UserError(
            f"{n} image pair(s) are copies across train/valid/test; they are listed in "
            f"{run_dir / PAIRS_FILE}: drop the copies from valid/test (see the README, 'Data audit'), "
            "or set data.leakage=warn to train anyway"
        )
    return lineage_counts(report)


def folder_items(data) -> list[Item]:
    """The audited images of a TrainData from image folders (train.data.FolderSource)."""
    items = []
    for split in SPLIT_ORDER:
        ds = getattr(data, split)
        if ds is None:
            continue
        source = ds.source
        items += [Item(split, p, data.classes[y]) for p, y in zip(source.paths, source.labels)]
    return items


def audit_data(cfg, data, run_dir: Path, say=print) -> dict[str, Any] | None:
    """The run's audit (main process only: train/run.py calls it through on_main). None when off or not folders."""
    if cfg.data.leakage == "off" or data.lineage.get("source") != "folder":
        return None  # CIFAR-10's splits are torchvision's; its valid and test are one set by design
    return audit_items(folder_items(data), run_dir, cfg.data.leakage, say)
