"""Classification metrics from probabilities and targets, numpy only: accuracy, top-5, loss, per-class
precision / recall / F1, the most confused pairs and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_EPS = 1e-12


def _check_shapes(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> None:
    if probs.ndim != 2 or targets.ndim != 1 or probs.shape[0] != targets.shape[0]:
        raise ValueError(f"probs must be [N,C] and targets [N]; got {probs.shape} and {targets.shape}")
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} classes")
    if targets.size and (targets.min() < 0 or targets.max() >= len(classes)):
        raise ValueError(f"targets must lie in [0, {len(classes)}); got {targets.min()}..{targets.max()}")


TOPK = 5  # the top-k accuracy reported; with TOPK classes or fewer it is trivially 1.0 and left out
CONFUSED_PAIRS = 10  # how many of the most confused (true, predicted) pairs test_metrics.json lists


def _ratio_or_none(num: int, den: int) -> float | None:
    """None (a blank CSV cell, JSON null) where the ratio is undefined: 0/0 is not a score of 0."""
    return float(num / den) if den else None


def per_class_scores(matrix: np.ndarray, classes: Sequence[str], names: Sequence[str]) -> list[dict]:
    """Support, precision, recall and F1 per class from the confusion matrix (rows = true).

    Recall and F1 are None for a class with no test images, precision for a class never predicted:
    undefined, not zero. F1 = 2TP / (support + predicted), so a class that is missed entirely scores 0.
    """
    tp, support, predicted = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    return [
        {
            "class": classes[i],
            "display_name": names[i],
            "support": int(support[i]),
            "precision": _ratio_or_none(int(tp[i]), int(predicted[i])),
            "recall": _ratio_or_none(int(tp[i]), int(support[i])),
            "f1": _ratio_or_none(2 * int(tp[i]), int(support[i] + predicted[i])) if support[i] else None,
        }
        for i in range(len(classes))
    ]


def most_confused(
    matrix: np.ndarray, classes: Sequence[str], names: Sequence[str], top: int = CONFUSED_PAIRS
) -> list[dict]:
    """The `top` largest off-diagonal counts, largest first (ties in class order): what is mistaken for what."""
    support = np.asarray(matrix, dtype=np.int64).sum(axis=1)
    off = np.array(matrix, dtype=np.int64)
    np.fill_diagonal(off, 0)
    pairs = []
    for flat in np.argsort(-off.ravel(), kind="stable")[:top]:
        i, j = divmod(int(flat), off.shape[1])
        if off[i, j] == 0:
            break
        pairs.append(
            {
                "true": classes[i],
                "true_name": names[i],
                "predicted": classes[j],
                "predicted_name": names[j],
                "count": int(off[i, j]),
                "share_of_true": float(off[i, j] / support[i]),
            }
        )
    return pairs


def classification_metrics(
    probs: np.ndarray, targets: np.ndarray, classes: list[str], display_names: list[str] | None = None
) -> dict:
    """Accuracy, top-5 (only with more than 5 classes), mean NLL, macro F1, per-class scores, the most
    confused pairs and the confusion matrix. An empty input gives zeros, not NaN: the result goes to JSON."""
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    _check_shapes(probs, targets, classes)
    names = list(display_names) if display_names else list(classes)
    n, c = probs.shape
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (targets, preds), 1)
    picked = probs[np.arange(n), targets]
    per_class = per_class_scores(matrix, classes, names)
    f1s = [row["f1"] for row in per_class if row["f1"] is not None]
    metrics: dict[str, Any] = {"n": int(n), "accuracy": float(np.trace(matrix) / n) if n else 0.0}
    if c > TOPK:
        topk = np.argsort(-probs, axis=1, kind="stable")[:, :TOPK]
        metrics["top5"] = float((topk == targets[:, None]).any(axis=1).mean()) if n else 0.0
    metrics.update(
        {
            "loss": float(-np.log(np.clip(picked, _EPS, None)).mean()) if n else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0,  # over the classes present in the test set
            "per_class": per_class,
            "most_confused": most_confused(matrix, classes, names),
            "confusion_matrix": matrix.tolist(),
        }
    )
    return metrics
