"""Figures a person opens: training curves, confusion matrix, top-k bars, image grids with predictions.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so no
global figure registry grows, no display is needed, and worker threads can draw safely. Every file
is written through core.fsio.atomic_path: a kill never leaves a half-written figure behind.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from core.fsio import atomic_path
from core.pathnames import escape_path

DPI = 100
GREEN, RED, BLUE, NEUTRAL = "#1a7f37", "#cf222e", "#4c72b0", "#24292f"
ANNOTATE_MAX_CLASSES = 20  # above this, count labels in confusion-matrix cells become unreadable

ImageLike = torch.Tensor | np.ndarray | Image.Image


def _save_figure(fig: Figure, path: str | os.PathLike) -> Figure:
    """Write `fig` as PNG; returned so tests can check what was drawn without decoding pixels."""
    FigureCanvasAgg(fig)  # attaches the Agg canvas; no pyplot, no display
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp, so the format must be given explicitly.
        fig.savefig(tmp, format="png", dpi=DPI)
    return fig


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0.0 where den is 0 (a class never seen or never predicted), no warnings."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


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
    """Every name a figure shows passes here: a non-UTF-8 folder name (lone surrogates, which no font or
    matplotlib's text layout accepts) is shown escaped, as serve's path column writes it."""
    text = escape_path(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols, math.ceil(math.sqrt(n * 1.5))))
    return max(1, math.ceil(n / cols)), cols


def _aspect(image: ImageLike) -> float:
    """Height / width, kept within 1:3..3:1 so a panorama still gets a readable figure."""
    h, w = _to_hwc(image).shape[:2]
    return float(np.clip(h / max(w, 1), 1 / 3, 3.0))


def _topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argsort(-probs, kind="stable")[: min(k, probs.shape[0])]
    return idx, probs[idx]


def _bar_colors(idx: np.ndarray, target: int | None) -> list[str]:
    """The true class green; the top-1 bar red when it is not the true class; the rest neutral blue."""
    pred = int(idx[0]) if len(idx) else -1
    return [
        GREEN if target is not None and i == target else RED if target is not None and i == pred else BLUE
        for i in idx
    ]


def _bars(
    ax,
    probs: np.ndarray,
    display_names: Sequence[str],
    k: int,
    target: int | None = None,
    name_chars: int = 44,
) -> None:
    """Top-k probability bars, the most likely on top, each class name written above its bar and its
    probability at its end. Names above (not tick labels beside) get the axes' whole width, so a long
    display name stays whole and the image above keeps the full column width."""
    idx, vals = _topk(np.asarray(probs, dtype=np.float64), k)
    y = np.arange(len(idx))
    bars = ax.barh(y, vals, height=0.45, color=_bar_colors(idx, target))
    for label in ax.bar_label(bars, labels=[f"{v:.2f}" for v in vals], padding=2, fontsize=7):
        label.set_gid("prob")
    for yi, i in zip(y, idx):
        ax.text(
            0,
            yi - 0.27,
            _short(str(display_names[i]), name_chars),
            fontsize=7,
            va="bottom",
            ha="left",
            gid="name",
        )
    ax.set_ylim(len(idx) - 0.5, -0.85)  # top down, with room for the first name
    ax.set_xlim(0, 1.15)  # room for the printed probability right of a full bar
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[["top", "right", "bottom"]].set_visible(False)


# ─── figures ───────────────────────────────────────────────────────────────────────────────────


def write_batch_grid(
    images: torch.Tensor, titles: list[str], path: str | os.PathLike, max_cols: int = 8
) -> None:
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


# The top-5 line is drawn only when the rows have it (the trainer leaves it out with 5 classes or fewer,
# where it is always 1.0). The lr is the one at the end of each epoch.
CURVE_PANELS = {
    "loss": ("train_loss", "valid_loss"),
    "accuracy": ("train_acc", "valid_acc", "valid_top5"),
    "learning rate": ("lr",),
}
BEST_MARKED = {"loss": "valid_loss", "accuracy": "valid_acc"}  # the value labelled at the best epoch


def _mark_best(ax, rows: list[dict], key: str | None, best_epoch: float) -> None:
    """A dotted line at the best epoch; on a metric panel a star and the value there."""
    ax.axvline(best_epoch, color=NEUTRAL, linestyle=":", linewidth=1)
    xs, ys = _series(rows, key) if key else ([], [])
    if best_epoch in xs:
        y = ys[xs.index(best_epoch)]
        ax.plot(
            [best_epoch],
            [y],
            marker="*",
            markersize=12,
            color=NEUTRAL,
            linestyle="none",
            label=f"best epoch {best_epoch:g}: {key} {y:.3f}",
        )


def _curve_panel(ax, panel: str, rows: list[dict], best_epoch: float | None) -> None:
    for key in CURVE_PANELS[panel]:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
    if ax.lines and best_epoch is not None:
        _mark_best(ax, rows, BEST_MARKED.get(panel), float(best_epoch))
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_title(panel if panel != "learning rate" else "learning rate (end of epoch)")
    ax.grid(alpha=0.3)
    if not ax.lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif panel == "learning rate":
        _, lrs = _series(rows, "lr")
        if min(lrs) > 0 and max(lrs) / min(lrs) > 20:  # a decay over decades reads on a log axis
            ax.set_yscale("log")
    else:
        ax.legend(fontsize=8)


def plot_curves(rows: list[dict], path: str | os.PathLike, best_epoch: int | None = None) -> Figure:
    """curves.png: loss, accuracy and learning rate vs epoch, the best epoch marked; absent columns are
    simply not drawn."""
    fig = Figure(figsize=(14, 4), layout="constrained")
    for ax, panel in zip(fig.subplots(1, len(CURVE_PANELS)), CURVE_PANELS):
        _curve_panel(ax, panel, rows, best_epoch)
    return _save_figure(fig, path)


def plot_confusion_matrix(matrix, display_names: Sequence[str], path: str | os.PathLike) -> Figure:
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
    # A figure title: over a small matrix with long class names the axes title ran off the figure.
    fig.suptitle(f"confusion matrix (rows normalized, n={int(counts.sum())})")
    if c <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=max(6.0, tick_size - 1),
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    return _save_figure(fig, path)


def plot_topk(
    image: ImageLike,
    probs: np.ndarray,
    display_names: Sequence[str],
    k: int,
    path: str | os.PathLike,
    title: str | None = None,
) -> Figure:
    """The tutorials' view_classify: the image at its own aspect (no empty bands) and its top-k bars,
    below a landscape or square image, beside a portrait one. The title names the prediction and its
    probability, under `title` (the file name) when given."""
    probs = np.asarray(probs, dtype=np.float64)
    pred = int(probs.argmax())
    heading = f"prediction: {_short(str(display_names[pred]), 56)} ({probs[pred]:.2f})"
    aspect, shown = _aspect(image), min(k, len(probs))
    bars_h = 0.32 * shown + 0.5
    if aspect <= 1.2:
        fig = Figure(figsize=(5.0, 5.0 * aspect + bars_h + 0.6), layout="constrained")
        ax_img, ax_bar = fig.subplots(2, 1, height_ratios=[5.0 * aspect, bars_h])
    else:  # a portrait image stacked over the bars would make a needlessly tall figure
        image_h = max(4.5, bars_h + 0.5)
        fig = Figure(figsize=(image_h / aspect + 3.8, image_h + 0.6), layout="constrained")
        grid = fig.add_gridspec(
            2, 2, width_ratios=[image_h / aspect, 3.6], height_ratios=[bars_h + 0.3, image_h - bars_h - 0.3]
        )
        ax_img, ax_bar = (
            fig.add_subplot(grid[:, 0]),
            fig.add_subplot(grid[0, 1]),
        )  # bars top right, unstretched
    _show(ax_img, image)
    # A figure title, not the image's: a narrow portrait image must not clip a long prediction.
    fig.suptitle(f"{_short(title, 60)}\n{heading}" if title else heading, fontsize=10)
    _bars(ax_bar, probs, display_names, k, name_chars=80 if aspect <= 1.2 else 52)
    ax_bar.set_title(f"top-{shown} class probabilities", fontsize=9)
    return _save_figure(fig, path)


def _prediction_title(probs: np.ndarray, target: int | None, names: Sequence[str]) -> tuple[str, str]:
    pred = int(probs.argmax())
    guess = f"pred: {_short(str(names[pred]), 20)} ({probs[pred]:.2f})"
    if target is None:
        return guess, NEUTRAL
    return f"true: {_short(str(names[target]), 20)}\n{guess}", GREEN if pred == target else RED


PREDICTIONS_LEGEND = {
    GREEN: "true class (title green: prediction right)",
    RED: "wrong prediction (title red)",
    BLUE: "other classes",
}


def write_predictions_grid(
    images: torch.Tensor,
    probs: np.ndarray,
    targets: np.ndarray | None,
    display_names: Sequence[str],
    path: str | os.PathLike,
    k: int = 5,
    max_cols: int = 4,
) -> Figure:
    """predictions.png: each cell an image (true vs predicted, green/red) above its top-k bars, a legend
    on top saying what the colours mean."""
    probs = np.asarray(probs, dtype=np.float64)
    m = len(images)
    rows, cols = _grid_shape(m, max_cols)
    cell_w = 2.6  # the image spans the cell: names sit above their bars, not beside them
    image_h = cell_w * max((_aspect(images[i]) for i in range(m)), default=1.0)
    bar_h = 0.34 * min(k, probs.shape[1]) + 0.2
    fig = Figure(figsize=((cell_w + 0.25) * cols, (image_h + 0.6 + bar_h) * rows + 0.4), layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)  # a gap between neighbouring images
    axes = fig.subplots(2 * rows, cols, squeeze=False, height_ratios=[image_h, bar_h] * rows)
    for i in range(rows * cols):
        ax_img, ax_bar = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        if i >= m:
            ax_img.set_axis_off()
            ax_bar.set_axis_off()
            continue
        target = None if targets is None else int(targets[i])
        text, color = _prediction_title(probs[i], target, display_names)
        _show(ax_img, images[i], text, color, fontsize=8)
        _bars(ax_bar, probs[i], display_names, k, target)
    if targets is not None:
        fig.legend(
            handles=[Patch(color=c, label=t) for c, t in PREDICTIONS_LEGEND.items()],
            loc="outside upper center",
            ncols=3,
            fontsize=8,
            frameon=False,
        )
    return _save_figure(fig, path)
