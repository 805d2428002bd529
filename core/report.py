"""Run reports a person can open: metrics CSVs, curves, confusion matrix, image grids with top-k bars.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so no
global figure registry grows, no display is needed, and worker threads can draw safely. Every file
is written through core.fsio.atomic_path: a kill never leaves a half-written report behind.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from core.fsio import atomic_path, write_json_atomic

DPI = 100
GREEN, RED, NEUTRAL = "#1a7f37", "#cf222e", "#24292f"
ANNOTATE_MAX_CLASSES = 20  # above this, count labels in confusion-matrix cells become unreadable
PREDICTIONS_MAX = 16
_EPS = 1e-12

ImageLike = torch.Tensor | np.ndarray | Image.Image


# ─── files ─────────────────────────────────────────────────────────────────────────────────────

def _save_figure(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)  # attaches the Agg canvas; no pyplot, no display
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp, so the format must be given explicitly.
        fig.savefig(tmp, format="png", dpi=DPI)


def _cell(value: Any) -> Any:
    """A CSV cell: floats compact (6 significant digits), numpy/torch scalars unwrapped, None empty."""
    if isinstance(value, (np.generic, torch.Tensor)):
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow([_cell(row.get(key)) for key in header])


# ─── metrics ───────────────────────────────────────────────────────────────────────────────────

def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0.0 where den is 0 (a class never seen or never predicted), no warnings."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _check_shapes(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> None:
    if probs.ndim != 2 or targets.ndim != 1 or probs.shape[0] != targets.shape[0]:
        raise ValueError(f"probs must be [N,C] and targets [N]; got {probs.shape} and {targets.shape}")
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} classes")
    if targets.size and (targets.min() < 0 or targets.max() >= len(classes)):
        raise ValueError(f"targets must lie in [0, {len(classes)}); got {targets.min()}..{targets.max()}")


def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: list[str],
                           display_names: list[str] | None = None) -> dict:
    """Accuracy, top-min(5,C), mean NLL, per-class accuracy/precision/recall and the confusion matrix.

    Per-class `accuracy` is the share of that class's images classified correctly (the CIFAR
    tutorial's per-class table), so it equals recall. An empty input gives zeros, not NaN,
    because the result goes to JSON.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets).astype(np.int64).reshape(-1)
    _check_shapes(probs, targets, classes)
    names = list(display_names) if display_names else list(classes)
    n, c = probs.shape
    k = min(5, c)
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (targets, preds), 1)
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    picked = probs[np.arange(n), targets]
    correct = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    recall, precision = _safe_ratio(correct, support), _safe_ratio(correct, predicted)
    per_class = [
        {"class": classes[i], "display_name": names[i], "support": int(support[i]),
         "accuracy": float(recall[i]), "precision": float(precision[i]), "recall": float(recall[i])}
        for i in range(c)
    ]
    return {
        "n": int(n),
        "accuracy": float(correct.sum() / n) if n else 0.0,
        "top5": float((topk == targets[:, None]).any(axis=1).mean()) if n else 0.0,
        "top5_k": k,
        "loss": float(-np.log(np.clip(picked, _EPS, None)).mean()) if n else 0.0,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def write_per_class_csv(metrics: dict, path: str | os.PathLike) -> None:
    write_metrics_csv(metrics["per_class"], path)


# ─── image helpers ─────────────────────────────────────────────────────────────────────────────

def _to_hwc(image: ImageLike) -> np.ndarray:
    """uint8 [3,H,W] tensor/array (or float in 0..1, or a PIL image) → uint8 [H,W,3] for imshow."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _show(ax, image: ImageLike, title: str = "", color: str = NEUTRAL, fontsize: float = 9) -> None:
    ax.imshow(_to_hwc(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title, color=color, fontsize=fontsize)


def _short(text: str, width: int = 22) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols, math.ceil(math.sqrt(n * 1.5))))
    return max(1, math.ceil(n / cols)), cols


def _topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-probs, kind="stable")[: min(k, probs.shape[0])]
    return idx, probs[idx]


def _bars(ax, probs: np.ndarray, display_names: Sequence[str], k: int, highlight: int | None = None) -> None:
    """Horizontal top-k probability bars, the most likely on top (the tutorials' view_classify)."""
    idx, vals = _topk(np.asarray(probs, dtype=np.float64), k)
    colors = [GREEN if highlight is not None and i == highlight else "#4c72b0" for i in idx]
    y = np.arange(len(idx))
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, [_short(str(display_names[i])) for i in idx], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)


# ─── figures ───────────────────────────────────────────────────────────────────────────────────

def write_batch_grid(images: torch.Tensor, titles: list[str], path: str | os.PathLike,
                     max_cols: int = 8) -> None:
    """The tutorials' data preview (train_batch.png): a grid of images, each titled with its label."""
    n = len(images)
    rows, cols = _grid_shape(n, max_cols)
    fig = Figure(figsize=(1.8 * cols, 1.9 * rows), layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, cols, squeeze=False).flat):
        if i < n:
            _show(ax, images[i], _short(str(titles[i]) if i < len(titles) else "", 20), fontsize=8)
        else:
            ax.set_axis_off()
    _save_figure(fig, path)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) for `key`, skipping rows without a usable number."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        try:
            y = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(y):
            xs.append(float(row.get("epoch", i + 1)))
            ys.append(y)
    return xs, ys


CURVE_PANELS = {"loss": ("train_loss", "valid_loss"), "accuracy": ("train_acc", "valid_acc", "valid_top5")}


def plot_curves(rows: list[dict], path: str | os.PathLike) -> None:
    """curves.png: loss and accuracy vs epoch; absent columns are simply not drawn."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, (panel, keys) in zip(fig.subplots(1, 2), CURVE_PANELS.items()):
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    _save_figure(fig, path)


def plot_confusion_matrix(matrix, display_names: Sequence[str], path: str | os.PathLike) -> None:
    """Row-normalized confusion matrix (rows = true); counts annotated only while they stay readable."""
    counts = np.asarray(matrix, dtype=np.int64)
    c = counts.shape[0]
    norm = _safe_ratio(counts.astype(np.float64), counts.sum(axis=1, keepdims=True).astype(np.float64))
    side = float(np.clip(0.22 * c + 3.0, 4.5, 26.0))
    tick_size = float(np.clip(300.0 / max(c, 1), 4.0, 10.0))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of true class")
    labels = [_short(str(name), 28) for name in display_names]
    ax.set_xticks(np.arange(c), labels, rotation=90, fontsize=tick_size)
    ax.set_yticks(np.arange(c), labels, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (rows normalized, n={int(counts.sum())})")
    if c <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=max(6.0, tick_size - 1),
                        color="white" if norm[i, j] > 0.5 else "black")
    _save_figure(fig, path)


def plot_topk(image: ImageLike, probs: np.ndarray, display_names: Sequence[str], k: int,
              path: str | os.PathLike, title: str | None = None) -> None:
    """The tutorials' view_classify: the image above a horizontal bar chart of its top-k classes."""
    fig = Figure(figsize=(4.5, 7), layout="constrained")
    ax_img, ax_bar = fig.subplots(2, 1, height_ratios=[3, 2])
    _show(ax_img, image, title or "", fontsize=11)
    _bars(ax_bar, probs, display_names, k)
    ax_bar.set_title("class probability", fontsize=10)
    _save_figure(fig, path)


def _prediction_title(pred: int, target: int | None, names: Sequence[str]) -> tuple[str, str]:
    if target is None:
        return f"pred: {_short(str(names[pred]), 18)}", NEUTRAL
    text = f"true: {_short(str(names[target]), 18)}\npred: {_short(str(names[pred]), 18)}"
    return text, GREEN if pred == target else RED


def write_predictions_grid(images: torch.Tensor, probs: np.ndarray, targets: np.ndarray | None,
                           display_names: Sequence[str], path: str | os.PathLike, k: int = 5,
                           max_cols: int = 4) -> None:
    """predictions.png: each cell an image (true vs predicted, green/red) above its top-k bars."""
    probs = np.asarray(probs, dtype=np.float64)
    m = len(images)
    rows, cols = _grid_shape(m, max_cols)
    bar_height = 0.22 * min(k, probs.shape[1]) + 0.4
    fig = Figure(figsize=(3.0 * cols, (2.9 + bar_height) * rows), layout="constrained")
    axes = fig.subplots(2 * rows, cols, squeeze=False, height_ratios=[2.6, bar_height] * rows)
    for i in range(rows * cols):
        ax_img, ax_bar = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        if i >= m:
            ax_img.set_axis_off()
            ax_bar.set_axis_off()
            continue
        target = None if targets is None else int(targets[i])
        text, color = _prediction_title(int(probs[i].argmax()), target, display_names)
        _show(ax_img, images[i], text, color, fontsize=8)
        _bars(ax_bar, probs[i], display_names, k, highlight=target)
    _save_figure(fig, path)


# ─── evaluation bundle of files ────────────────────────────────────────────────────────────────

def write_evaluation(out_dir: str | os.PathLike, probs: np.ndarray, targets: np.ndarray, classes: list[str],
                     display_names: list[str] | None, images: torch.Tensor | None = None,
                     image_rows: Sequence[int] | None = None) -> dict:
    """test_metrics.json, per_class.csv, confusion_matrix.png (+ predictions.png for ≤16 images).

    `images` show rows `image_rows` of probs/targets (default: the first rows).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(display_names) if display_names else list(classes)
    metrics = classification_metrics(probs, targets, classes, names)
    write_json_atomic(out / "test_metrics.json", metrics)
    write_per_class_csv(metrics, out / "per_class.csv")
    plot_confusion_matrix(metrics["confusion_matrix"], names, out / "confusion_matrix.png")
    if images is not None and len(images):
        rows = np.asarray(image_rows if image_rows is not None else range(len(images)), dtype=int)
        m = min(len(images), PREDICTIONS_MAX, len(rows))
        rows = rows[:m]
        write_predictions_grid(images[:m], np.asarray(probs)[rows], np.asarray(targets)[rows], names,
                               out / "predictions.png")
    return metrics
