"""Figures for calibrated confidence: the reliability diagram (training) and the risk–coverage curve (serve).

Drawn on a bare `Figure` with the Agg canvas (no pyplot), written atomically, as core.report does.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.calibration import ece, reliability, risk_coverage
from core.fsio import atomic_path

DPI = 100
BEFORE, AFTER, IDEAL = "#cf222e", "#1a7f37", "#8c959f"


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)  # the temp name ends in .tmp: say the format
    return fig


def _reliability_panel(ax, title: str, before: np.ndarray, after: np.ndarray, targets: np.ndarray) -> None:
    """Accuracy per confidence bin before and after scaling, against the diagonal of perfect calibration."""
    ax.plot([0, 1], [0, 1], ls="--", color=IDEAL, lw=1, label="perfectly calibrated")
    for probs, color, name in ((before, BEFORE, "before"), (after, AFTER, "after")):
        r = reliability(probs, targets)
        used = r["count"] > 0
        ax.plot(
            r["confidence"][used],
            r["accuracy"][used],
            "o-",
            color=color,
            ms=4,
            label=f"{name} (ECE {ece(probs, targets):.3f})",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-1 probability (bin mean)", ylabel="accuracy in bin")
    ax.set_title(f"{title} (n={len(targets)})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)


def plot_reliability(
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    temperature: float,
    threshold: float | None,
    path: str | os.PathLike,
) -> Figure:
    """One panel per (title, probs before, probs after, targets): validation, and test when there is one."""
    fig = Figure(figsize=(4.6 * len(panels), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, before, after, targets) in zip(axes, panels):
        _reliability_panel(ax, title, before, after, targets)
        if threshold is not None:
            ax.axvline(threshold, color="#4c72b0", lw=1, label=f"threshold {threshold:.3f}")
            ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"reliability: temperature T = {temperature:.3f}")
    return _save(fig, path)


def plot_risk_coverage(
    probs: np.ndarray, targets: np.ndarray, threshold: float | None, path: str | os.PathLike
) -> Figure:
    """Error rate of the accepted rows against the share accepted, the most confident first; the
    operating point of `threshold` marked."""
    coverage, risk = risk_coverage(probs, targets)
    fig = Figure(figsize=(5.2, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(coverage, risk, color="#4c72b0", lw=1.5)
    if threshold is not None and len(probs):
        accepted = np.asarray(probs).max(axis=1) >= threshold
        if accepted.any():
            wrong = np.asarray(probs).argmax(axis=1)[accepted] != np.asarray(targets)[accepted]
            ax.plot([accepted.mean()], [wrong.mean()], "o", color=BEFORE, label=f"threshold {threshold:.3f}")
            ax.legend(loc="upper left", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, max(0.05, float(risk.max()) * 1.1) if len(risk) else 1))
    ax.set(xlabel="coverage (share of rows accepted)", ylabel="risk (error rate of accepted rows)")
    ax.set_title(f"risk-coverage (n={len(targets)})", fontsize=10)
    return _save(fig, path)
