"""The files an evaluation leaves: test_metrics.json (what was evaluated on what, and its scores),
per_class.csv, confusion_matrix.png, predictions.png; and the CSV writer metrics.csv shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.figures import plot_confusion_matrix, write_predictions_grid
from core.fsio import write_csv_atomic, write_json_atomic
from core.metrics import classification_metrics

PREDICTIONS_MAX = 16


def _cell(value: Any) -> Any:
    """A CSV cell: floats compact (6 significant digits), numpy/torch scalars unwrapped, None empty."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar, 0-d array or tensor
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_metrics_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write rows as CSV; the header is the union of keys in first-seen order, gaps left empty."""
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    write_csv_atomic(path, header, ([_cell(row.get(key)) for key in header] for row in rows))


def write_per_class_csv(metrics: dict, path: str | os.PathLike) -> None:
    write_metrics_csv(metrics["per_class"], path)


def model_identity(model: str | os.PathLike) -> dict[str, str]:
    """Which model a number belongs to: its path and the sha256 of its weights (a bundle's model.safetensors,
    or the model.onnx / model.engine file itself), so two evaluations can be told apart or matched."""
    from core.bundle import RECORD_FILE, WEIGHTS_FILE, resolve_bundle_dir  # builds models: only when asked
    from core.model_record import sha256_file

    p = Path(model)
    weights = resolve_bundle_dir(p) / WEIGHTS_FILE if p.is_dir() or p.name == RECORD_FILE else p
    return {
        "path": str(p.resolve()),
        "weights": str(weights.resolve()),
        "weights_sha256": sha256_file(weights),
    }


def evaluation_source(model: str | os.PathLike, folder: str | os.PathLike, images: int, **extra: Any) -> dict:
    """The `model` and `data` entries test_metrics.json opens with: what was evaluated on what."""
    return {"model": model_identity(model), "data": {"folder": str(folder), "images": int(images), **extra}}


def write_evaluation(
    out_dir: str | os.PathLike,
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    display_names: list[str] | None,
    images: Any = None,  # uint8 [N,3,H,W] tensor of the first (or image_rows) rows
    image_rows: Sequence[int] | None = None,
    source: dict | None = None,
) -> dict:
    """test_metrics.json (opening with `source`, see evaluation_source), per_class.csv, confusion_matrix.png
    (+ predictions.png for ≤16 images).

    `images` show rows `image_rows` of probs/targets (default: the first rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(display_names) if display_names else list(classes)
    metrics = {**(source or {}), **classification_metrics(probs, targets, classes, names)}
    write_json_atomic(out / "test_metrics.json", metrics)
    write_per_class_csv(metrics, out / "per_class.csv")
    plot_confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png")
    if images is not None and len(images):
        rows = np.asarray(image_rows if image_rows is not None else range(len(images)), dtype=int)
        m = min(len(images), PREDICTIONS_MAX, len(rows))
        rows = rows[:m]
        write_predictions_grid(
            images[:m], np.asarray(probs)[rows], np.asarray(targets)[rows], names, out / "predictions.png"
        )
    return metrics
