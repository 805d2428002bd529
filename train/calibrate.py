"""After training: fit the best bundle's temperature and acceptance threshold on validation, write them
into its bundle.json, and report ECE before/after (validation, test) in test_metrics.json and calibration.png.

The saved best/ model is the one calibrated (with EMA on, its saved weights), since that is what ships.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator

from core.bundle import read_record, write_record
from core.calibration import (
    CalibrationRecord,
    calibrate,
    ece,
    selective_metrics,
    separable,
    separable_line,
    softmax,
    unreachable_line,
)
from core.calibration_plot import plot_reliability
from core.config import Config
from core.fsio import write_json_atomic
from train.engine import BEST_DIR
from train.evaluate import EvalResult, evaluate_bundle

FIGURE = "calibration.png"


@dataclass
class Calibrated:
    """The fit (main process only) and the validation logits it was fitted on, for the report."""

    record: CalibrationRecord
    valid_logits: np.ndarray
    valid_targets: np.ndarray


def score_valid(cfg: Config, data, run_dir: Path, accelerator: Accelerator) -> EvalResult | None:
    """best/ on validation (collective), once for calibrate_best and write_suspects; None without best/."""
    best = run_dir / BEST_DIR
    return evaluate_bundle(cfg, data.valid, best, accelerator)[0] if best.is_dir() else None


def calibrate_best(
    cfg: Config, run_dir: Path, accelerator: Accelerator, result: EvalResult | None
) -> Calibrated | None:
    """Fit T and the threshold on `result` (score_valid's) and record them in best/bundle.json; None off
    the main process."""
    if result is None or not accelerator.is_main_process or result.logits is None or not len(result.logits):
        return None
    best = run_dir / BEST_DIR
    record = read_record(best)
    fit = calibrate(result.logits, result.targets, cfg.calibration.target_precision)
    record.calibration = fit
    write_record(best, record)
    if separable(result.logits, result.targets):
        accelerator.print(separable_line())
    accelerator.print(describe(fit))
    return Calibrated(fit, result.logits, result.targets)


def describe(fit: CalibrationRecord) -> str:
    head = f"calibration: temperature {fit.temperature:.3f}, validation ECE {fit.ece_before:.4f} → {fit.ece_after:.4f}"
    if not fit.target_reached:
        return head + "\n" + unreachable_line(fit)
    return (
        f"{head}; threshold {fit.threshold:.4f} accepts {fit.coverage_valid:.1%} of validation at "
        f"precision ≥ {fit.target_precision:g}"
    )


def _split_figures(logits: np.ndarray, targets: np.ndarray, fit: CalibrationRecord) -> dict[str, Any]:
    before, after = softmax(logits), softmax(logits, fit.temperature)
    threshold = fit.threshold if fit.threshold is not None else 0.0
    sel = selective_metrics(after, targets, after.max(axis=1) >= threshold)
    return {"ece_before": ece(before, targets), "ece_after": sel.pop("ece"), **sel}


def calibration_report(
    run_dir: Path, calibrated: Calibrated | None, metrics: dict | None, test: EvalResult | None
) -> dict | None:
    """calibration.png (validation, and test when there is one) and test_metrics.json's `calibration`
    section; returns `metrics` with it."""
    if calibrated is None:
        return metrics
    fit = calibrated.record
    splits = {"valid": (calibrated.valid_logits, calibrated.valid_targets)}
    if test is not None and test.logits is not None and len(test.logits):
        splits["test"] = (test.logits, test.targets)
    panels = [(name, softmax(lg), softmax(lg, fit.temperature), tg) for name, (lg, tg) in splits.items()]
    plot_reliability(panels, fit.temperature, fit.threshold, run_dir / FIGURE)
    if metrics is None:
        return None
    metrics["calibration"] = {
        "temperature": fit.temperature,
        "threshold": fit.threshold,
        "target_precision": fit.target_precision,
        "target_reached": fit.target_reached,
        **{name: _split_figures(lg, tg, fit) for name, (lg, tg) in splits.items()},
    }
    write_json_atomic(run_dir / "test_metrics.json", metrics)
    return metrics
