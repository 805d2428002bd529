"""Calibrated confidence: fit a temperature on validation logits, measure ECE, choose an acceptance threshold.

Temperature scaling (Guo et al. 2017) divides the logits by one number T, so the ranking (and accuracy)
never changes, only how confident the probabilities are. The threshold on the calibrated top-1
probability is the "don't know" channel: rows below it are not accepted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

ECE_BINS = 15
# T's search interval: wide enough for any trained net (overconfident nets land at 1-5), bounded so a
# perfectly separated validation set (NLL falls forever as T → 0) still gives a finite answer.
T_MIN, T_MAX = 0.05, 100.0


@dataclass
class CalibrationRecord:
    """What bundle.json's `calibration` holds; `threshold` None: every row is accepted."""

    temperature: float = 1.0
    threshold: float | None = None
    target_precision: float | None = None
    target_reached: bool = False
    coverage_valid: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"calibration temperature must be a number > 0, got {t!r}")
        self.temperature = float(t)
        th = self.threshold
        if th is not None and (isinstance(th, bool) or not isinstance(th, (int, float)) or not 0 <= th <= 1):
            raise ValueError(f"calibration threshold must be null or in [0, 1], got {th!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationRecord:
        if not isinstance(d, dict):
            raise TypeError(f"calibration must be a mapping, got {d!r}")
        known = {f.name for f in fields(cls)}  # a newer writer's extra keys are not an error
        return cls(**{k: v for k, v in d.items() if k in known})


# ─── the pieces ───────────────────────────────────────────────────────────────────────────────────


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), targets]))


def separable(logits: np.ndarray, targets: np.ndarray) -> bool:
    """Every answer right: NLL then falls forever as T → 0, so validation holds no evidence for any T
    (the fit would land on T_MIN and make every later answer, unfamiliar ones too, look certain)."""
    return bool(len(targets)) and bool((np.asarray(logits).argmax(axis=1) == np.asarray(targets)).all())


def fit_temperature(logits: np.ndarray, targets: np.ndarray, iters: int = 80) -> float:
    """T minimising validation NLL (1 when every answer is right, see `separable`). NLL is convex in β = 1/T, so a golden-section search on β over
    [1/T_MAX, 1/T_MIN] finds the global minimum without a learning rate or a starting point to tune."""
    if len(targets) == 0:
        return 1.0
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets, dtype=np.int64)
    if separable(logits, targets):
        return 1.0
    lo, hi = 1 / T_MAX, 1 / T_MIN
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, targets, 1 / a), nll(logits, targets, 1 / b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, targets, 1 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, targets, 1 / b)
    return float(1 / ((lo + hi) / 2))


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence, accuracy of the top-1 answer."""
    probs = np.asarray(probs, dtype=np.float64)
    conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_hit = np.bincount(idx, weights=hit, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "count": count,
            "confidence": np.where(count > 0, sum_conf / count, np.nan),
            "accuracy": np.where(count > 0, sum_hit / count, np.nan),
            "edges": np.linspace(0, 1, bins + 1),
        }


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy − confidence| over the bins."""
    if len(targets) == 0:
        return 0.0
    r = reliability(probs, targets, bins)
    used = r["count"] > 0
    gap = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((gap * r["count"][used]).sum() / r["count"].sum())


def choose_threshold(
    probs: np.ndarray, targets: np.ndarray, target_precision: float
) -> tuple[float | None, float]:
    """(threshold, coverage): the lowest threshold on the top-1 probability at which the accepted rows
    (top-1 ≥ threshold) are at least `target_precision` correct. 0.0 when every row already is;
    (None, 1.0) when no threshold reaches it (then every row is accepted)."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n == 0:
        return None, 1.0
    conf, hit = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)
    if hit.mean() >= target_precision:
        return 0.0, 1.0
    order = np.argsort(-conf, kind="stable")
    conf, hit = conf[order], hit[order]
    precision = np.cumsum(hit) / np.arange(1, n + 1)
    # Only the last row of a run of tied confidences is a real cut: a threshold accepts all ties or none.
    cut = np.append(conf[1:] != conf[:-1], True)
    ok = np.nonzero(cut & (precision >= target_precision - 1e-12))[0]
    if not len(ok):
        return None, 1.0
    last = int(ok[-1])  # the lowest qualifying threshold accepts the most rows
    return float(conf[last]), (last + 1) / n


def calibrate(logits: np.ndarray, targets: np.ndarray, target_precision: float) -> CalibrationRecord:
    """The whole fit on validation: T, ECE before and after, and the threshold for `target_precision`."""
    t = fit_temperature(logits, targets)
    before, after = softmax(logits), softmax(logits, t)
    threshold, coverage = choose_threshold(after, targets, target_precision)
    return CalibrationRecord(
        temperature=t,
        threshold=threshold,
        target_precision=target_precision,
        target_reached=threshold is not None,
        coverage_valid=coverage,
        ece_before=ece(before, targets),
        ece_after=ece(after, targets),
    )


def separable_line() -> str:
    return (
        "calibration: every validation image is classified correctly, which gives no evidence for a "
        "temperature; T stays 1 (use a larger or harder validation split for a calibrated confidence)"
    )


def unreachable_line(record: CalibrationRecord) -> str:
    """The one line said when validation cannot reach the target precision at any threshold."""
    return (
        f"calibration: no threshold reaches precision {record.target_precision:g} on validation; "
        "the bundle records threshold null and serve accepts every row (lower calibration.target_precision, "
        "or pass serve --accept-above P)"
    )


# ─── per-row confidence figures (serve) ────────────────────────────────────────────────────────────


def margin_entropy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 − top-2 probability (the top-1 itself with one class) and entropy in nats, per row."""
    p = np.asarray(probs, dtype=np.float64)
    top = -np.sort(-p, axis=1)[:, :2]
    margin = top[:, 0] - (top[:, 1] if p.shape[1] > 1 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return margin, entropy


def selective_metrics(probs: np.ndarray, targets: np.ndarray, accepted: np.ndarray) -> dict[str, Any]:
    """Coverage, accuracy of accepted rows and of all rows, and ECE, for labelled predictions."""
    probs, accepted = np.asarray(probs, dtype=np.float64), np.asarray(accepted, dtype=bool)
    n = len(probs)
    hit = probs.argmax(axis=1) == np.asarray(targets) if n else np.zeros(0, dtype=bool)
    return {
        "n": n,
        "accepted": int(accepted.sum()),
        "coverage": float(accepted.mean()) if n else None,
        "accuracy_accepted": float(hit[accepted].mean()) if accepted.any() else None,
        "accuracy_all": float(hit.mean()) if n else None,
        "ece": ece(probs, targets) if n else None,
    }


def risk_coverage(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, risk) when accepting the k most confident rows, k = 1..n: risk = error rate of those."""
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-probs.max(axis=1), kind="stable")
    miss = (probs.argmax(axis=1) != np.asarray(targets))[order]
    k = np.arange(1, n + 1)
    return k / n, np.cumsum(miss) / k
