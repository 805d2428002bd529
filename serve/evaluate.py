"""--evaluate: score a finished predictions file against the class folders of a labelled input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.evaluation import evaluation_source, write_evaluation
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
    out: str | Path, layout: Layout, root: str, absolute: bool, eval_dir: str | Path, model: str | Path
) -> dict:
    """Accuracy, per-class precision/recall/F1, the most confused pairs and the confusion matrix from the rows
    of `out` (all of them, resumed ones too), recorded with the `model` and `root` they came from. Error rows
    and images outside a class folder are left out and counted in data.excluded."""
    index = {c: i for i, c in enumerate(layout.classes)}
    base = os.path.abspath(root)
    probs, targets, excluded = [], [], 0
    for row in iter_rows(out, layout):
        rel = os.path.relpath(row["path"], base) if absolute else row["path"]
        cls = rel.replace(os.sep, "/").split("/")[0]
        if row["status"] != "ok" or cls not in index or "/" not in rel.replace(os.sep, "/"):
            excluded += 1
            continue
        probs.append([float(row[f"prob_{c}"]) for c in layout.classes])
        targets.append(index[cls])
    source = evaluation_source(model, base, len(targets) + excluded, excluded=excluded)
    return write_evaluation(
        eval_dir,
        np.asarray(probs, dtype=np.float64).reshape(-1, len(index)),
        np.asarray(targets, dtype=np.int64),
        list(layout.classes),
        list(layout.display_names),
        source=source,
    )


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
    return (
        f"evaluation: accuracy {m['accuracy']:.4f}{top5}, macro F1 {m['macro_f1']:.4f} on {m['n']} images "
        f"({m['data']['excluded']} error/unlabelled rows excluded){confused} -> {eval_dir}/"
    )
