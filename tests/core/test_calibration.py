"""Calibration maths on synthetic logits whose true temperature and calibration are known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.bundle import RECORD_FILE, read_record
from core.calibration import (
    CalibrationRecord,
    calibrate,
    choose_threshold,
    ece,
    fit_temperature,
    margin_entropy,
    risk_coverage,
    softmax,
)
from core.errors import UserError


def _synthetic(true_t: float, n: int = 20000, classes: int = 5, seed: int = 0):
    """Logits z and labels drawn from softmax(z / true_t): the NLL-optimal temperature is true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3.0, size=(n, classes))
    p = softmax(z, true_t)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_the_temperature_the_labels_were_drawn_with(true_t):
    z, labels = _synthetic(true_t)
    assert fit_temperature(z, labels) == pytest.approx(true_t, rel=0.05)


def test_scaling_by_the_fitted_temperature_lowers_ece_of_an_overconfident_set():
    z, labels = _synthetic(3.0)  # the raw logits are 3x too sharp
    fit = calibrate(z, labels, target_precision=0.9)
    assert fit.ece_before > 0.1 and fit.ece_after < 0.02


def test_ece_of_a_perfectly_calibrated_set_is_near_zero_and_of_a_confident_wrong_set_is_large():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 50000)
    probs = np.stack([conf, 1 - conf], axis=1)
    correct = rng.random(50000) < conf  # right exactly as often as it says
    targets = np.where(correct, 0, 1)
    assert ece(probs, targets) < 0.01
    assert ece(probs, np.ones(50000, dtype=int)) == pytest.approx(conf.mean(), abs=1e-9)


def test_threshold_is_the_lowest_at_which_accepted_rows_reach_the_target():
    # top-1 confidences 0.9..0.5; right, right, wrong, right, wrong
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    probs = np.stack([conf, 1 - conf], axis=1)
    targets = np.array([0, 0, 1, 0, 1])
    assert choose_threshold(probs, targets, 0.75) == (0.6, 0.8)  # 3 of 4 right at >= 0.6
    assert choose_threshold(probs, targets, 1.0) == (0.8, 0.4)
    assert choose_threshold(probs, targets, 0.6) == (0.0, 1.0)  # every row already is 60% right


def test_threshold_accepts_tied_confidences_together_and_is_null_when_unreachable():
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.6, 0.4]])
    # the two tied 0.7 rows: one right, one wrong; a cut between them does not exist
    assert choose_threshold(probs, np.array([0, 1, 0]), 0.9) == (None, 1.0)
    assert choose_threshold(probs, np.array([0, 0, 1]), 0.9) == (0.7, pytest.approx(2 / 3))


def test_unreachable_target_is_recorded_as_null_threshold_not_reached():
    z = np.array([[2.0, 0.0], [2.0, 0.0]])
    fit = calibrate(z, np.array([1, 1]), target_precision=0.95)
    assert fit.threshold is None and fit.target_reached is False and fit.coverage_valid == 1.0


def test_margin_and_entropy_per_row():
    margin, entropy = margin_entropy(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.7, 0.2, 0.1]]))
    assert margin == pytest.approx([0.0, 1.0, 0.5])
    assert entropy == pytest.approx(
        [np.log(2), 0.0, -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))]
    )


def test_risk_coverage_orders_by_confidence():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    coverage, risk = risk_coverage(probs, np.array([0, 0, 1]))  # the 0.8 row is wrong
    assert coverage == pytest.approx([1 / 3, 2 / 3, 1.0]) and risk == pytest.approx([0.0, 0.5, 1 / 3])


# ─── the bundle record ────────────────────────────────────────────────────────────────────────────


def _with_calibration(bundle, value):
    path = bundle / RECORD_FILE
    d = json.loads(path.read_text())
    d["calibration"] = value
    path.write_text(json.dumps(d))
    return bundle


def test_a_bundle_without_calibration_reads_as_temperature_one_and_no_threshold(make_bundle):
    record = read_record(make_bundle(arch="cifar_cnn"))
    assert record.calibration is None and record.temperature == 1.0 and record.threshold is None
    assert "calibration" not in record.to_dict()


def test_the_calibration_record_round_trips_through_bundle_json(make_bundle):
    fit = CalibrationRecord(1.7, 0.62, 0.95, True, 0.71, 0.08, 0.02)
    record = read_record(_with_calibration(make_bundle(arch="cifar_cnn"), fit.to_dict()))
    assert record.calibration == fit and record.temperature == 1.7 and record.threshold == 0.62


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 0},
        {"temperature": -1.0},
        {"temperature": "2"},
        {"temperature": 1.5, "threshold": 1.2},
        {"temperature": 1.5, "threshold": -0.1},
        "hot",
    ],
)
def test_a_calibration_record_out_of_range_is_refused_on_read(make_bundle, bad):
    bundle = _with_calibration(make_bundle(arch="cifar_cnn"), bad)
    with pytest.raises(UserError, match="malformed model record"):
        read_record(bundle)


def test_a_validation_set_answered_all_right_keeps_temperature_one():
    # NLL would keep falling as T -> 0: no evidence to sharpen every later answer with
    z = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    assert fit_temperature(z, np.array([0, 1, 2])) == 1.0
    assert fit_temperature(z, np.array([0, 1, 1])) != 1.0
