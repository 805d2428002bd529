"""The acceptance threshold a serve run applies: --accept-above, else the model's calibrated one, else none.

A row is `accepted` when its (calibrated) top-1 probability is at least the threshold; without one every
ok row is accepted. The threshold is a "don't know" channel for confusable inputs, not an
out-of-distribution detector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import UserError

if TYPE_CHECKING:  # serve/main.py imports this module for --help, which must not load torch
    from core.bundle import BundleRecord


def check_accept_above(value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise UserError(f"--accept-above must be a probability in [0, 1] (got {value}); 0 accepts every row")


def is_accepted(probability: float | None, threshold: float | None) -> bool:
    """The one place a prediction is accepted or not: top-1 probability >= the threshold (the model's
    calibrated one, or accept_above); without one every decoded image is accepted; an error never is."""
    if probability is None:
        return False
    return threshold is None or probability >= threshold


def resolve_threshold(
    accept_above: float | None, record: BundleRecord, model: str
) -> tuple[float | None, str]:
    """(threshold, the line serve says once at start about it)."""
    if accept_above is not None:
        return accept_above, f"accepting rows with top-1 probability >= {accept_above:g} (--accept-above)"
    fit = record.calibration
    if fit is None:
        return None, (
            f"note: {model} has no calibration record (trained before calibration existed): probabilities "
            "are uncalibrated and every row is accepted; --accept-above P sets a threshold"
        )
    if fit.threshold is None:
        return None, (
            f"note: {model}'s calibration could not reach precision {fit.target_precision} on validation, "
            "so it has no threshold and every row is accepted; --accept-above P sets one"
        )
    coverage = "" if fit.coverage_valid is None else f"; {fit.coverage_valid:.0%} of validation accepted"
    target = "" if fit.target_precision is None else f" for precision {fit.target_precision:g}"
    return fit.threshold, (
        f"accepting rows with calibrated top-1 probability >= {fit.threshold:.4f} "
        f"(the model's threshold{target}{coverage})"
    )
