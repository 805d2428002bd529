"""--evaluate: score a finished predictions file against the class folders of a labelled input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.calibration import selective_metrics
from core.calibration_plot import plot_risk_coverage
from core.errors import UserError
from core.evaluation import evaluation_source, write_evaluation
from core.fsio import write_json_atomic
from serve.row_paths import is_url, resolve_row
from serve.writer import Layout, iter_rows


def check_labelled_folder(root: str, classes: list[str]) -> None:
    """A labelled ImageFolder: every class subfolder must be one of the model's classes."""
    if not os.path.isdir(root):
        raise UserError(
            f"--evaluate needs one labelled folder as input (class subfolders); {root} is not a folder"
        )
    with os.scandir(root) as it:
        folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise UserError(
            f"--evaluate needs class subfolders in {root} (an ImageFolder like data/test/<class>/*.jpg)"
        )
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise UserError(
            f"--evaluate: {root} has class folders the model does not know: {', '.join(unknown[:8])} "
            f"(model classes: {', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''})"
        )


def evaluate_output(
    out: str | Path, layout: Layout, root: str, base: str | None, eval_dir: str | Path, model: str | Path
) -> dict:
    """Accuracy, per-class precision/recall/F1, the most confused pairs and the confusion matrix from the rows
    of `out` (all of them, resumed ones too), recorded with the `model` and `root` they came from. A row's
    file is found from the output's `base` (serve.row_paths); error rows and images outside a class folder
    of `root` are left out and counted in data.excluded."""
    index = {c: i for i, c in enumerate(layout.classes)}
    where = _InRoot(root)
    probs, targets, accepted, excluded = [], [], [], 0
    for row in iter_rows(out, layout):
        source = resolve_row(row["path"], base)
        rel = where.relative(source) if source and not is_url(source) else ""
        cls = rel.split("/")[0]
        if row["status"] != "ok" or cls not in index or "/" not in rel:
            excluded += 1
            continue
        probs.append([float(row[f"prob_{c}"]) for c in layout.classes])
        targets.append(index[cls])
        accepted.append(row.get("accepted") in (True, "true"))
    source = evaluation_source(model, root, len(targets) + excluded, excluded=excluded)
    probs_a, targets_a = np.asarray(probs, dtype=np.float64).reshape(-1, len(index)), np.asarray(targets)
    metrics = write_evaluation(
        eval_dir, probs_a, targets_a, list(layout.classes), list(layout.display_names), source=source
    )
    return add_selective(metrics, eval_dir, probs_a, targets_a, np.asarray(accepted, dtype=bool), layout)


class _InRoot:
    """A row's file relative to the labelled folder. A row written under another spelling of that folder
    (a symlink to it, classified earlier: resume skipped the image) is found through its folder's real
    location, looked up once per folder."""

    def __init__(self, root: str):
        self.root, self.real_root = os.path.abspath(root), os.path.realpath(root)
        self._real: dict[str, str] = {}

    def relative(self, source: str) -> str:
        rel = os.path.relpath(source, self.root)
        if rel.startswith(".."):  # outside as spelled: maybe inside through a link
            folder, name = os.path.split(source)
            if folder not in self._real:
                self._real[folder] = os.path.relpath(os.path.realpath(folder), self.real_root)
            rel = os.path.join(self._real[folder], name)
        return rel.replace(os.sep, "/")


def add_selective(
    metrics: dict, eval_dir: str | Path, probs: np.ndarray, targets: np.ndarray, accepted: np.ndarray, layout
) -> dict:
    """The `accepted` column judged: coverage, accuracy of accepted rows, ECE (test_metrics.json's
    `selective`), and risk_coverage.png: the error rate of the k most confident rows for every k."""
    metrics["selective"] = {"threshold": layout.threshold, **selective_metrics(probs, targets, accepted)}
    write_json_atomic(Path(eval_dir) / "test_metrics.json", metrics)
    plot_risk_coverage(probs, targets, layout.threshold, Path(eval_dir) / "risk_coverage.png")
    return metrics


def summary(metrics: dict, eval_dir: str | Path) -> str:
    """The line serve prints after --evaluate: the headline numbers and the worst confusion."""
    m = metrics
    top5 = f", top-5 {m['top5']:.4f}" if "top5" in m else ""  # absent with 5 classes or fewer
    worst = m["most_confused"][0] if m["most_confused"] else None
    confused = (
        f"; most confused: {worst['true_name']} predicted as {worst['predicted_name']} {worst['count']}x"
        if worst
        else ""
    )
    sel = m.get("selective") or {}
    accepted = (
        f"; accepted {sel['coverage']:.1%} of rows at accuracy {sel['accuracy_accepted']:.4f}, ECE {sel['ece']:.4f}"
        if sel.get("accuracy_accepted") is not None
        else ""
    )
    return (
        f"evaluation: accuracy {m['accuracy']:.4f}{top5}, macro F1 {m['macro_f1']:.4f} on {m['n']} images "
        f"({m['data']['excluded']} error/unlabelled rows excluded){accepted}{confused} -> {eval_dir}/"
    )
