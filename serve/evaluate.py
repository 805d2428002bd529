"""--evaluate: score a finished predictions file against the class folders of a labelled input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.report import write_evaluation
from serve.writer import Layout, iter_rows


def check_labelled_folder(root: str, classes: list[str]) -> None:
    """A labelled ImageFolder: every class subfolder must be one of the model's classes."""
    if not os.path.isdir(root):
        raise UserError(f"--evaluate needs one labelled folder as input (class subfolders); {root} is not a folder")
    with os.scandir(root) as it:
        folders = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not folders:
        raise UserError(f"--evaluate needs class subfolders in {root} (an ImageFolder like data/test/<class>/*.jpg)")
    unknown = [f for f in folders if f not in classes]
    if unknown:
        raise UserError(f"--evaluate: {root} has class folders the model does not know: {', '.join(unknown[:8])} "
                        f"(model classes: {', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''})")


def evaluate_output(out: str | Path, layout: Layout, root: str, absolute: bool, eval_dir: str | Path) -> dict:
    """Accuracy, per-class accuracy and confusion matrix from the rows of `out` (all of them, resumed ones
    too). Error rows and images outside a class folder are left out and counted in `excluded`."""
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
    metrics = write_evaluation(eval_dir, np.asarray(probs, dtype=np.float64).reshape(-1, len(index)),
                               np.asarray(targets, dtype=np.int64), list(layout.classes),
                               list(layout.display_names))
    metrics["excluded"] = excluded
    return metrics
