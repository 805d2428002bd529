"""Calibrated answers in serve: accepted/margin/entropy columns, the threshold's source, resume, --evaluate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from core.bundle import read_record, write_record
from core.calibration import CalibrationRecord
from tests.serve.helpers import read_rows, serve


def _calibrate(bundle, temperature: float = 1.0, threshold: float | None = None):
    record = read_record(bundle)
    record.calibration = CalibrationRecord(
        temperature, threshold, 0.95, threshold is not None, 0.5 if threshold is not None else 1.0
    )
    write_record(bundle, record)
    return bundle


def _probs(rows) -> np.ndarray:
    return np.array([[float(r[f"prob_{c}"]) for c in "1234"] for r in rows])


def _serve_rows(*argv):
    out = argv[argv.index("--out") + 1]
    assert serve(*argv, "--workers", 0) == 0
    return read_rows(out)


def test_a_bundle_without_calibration_accepts_every_ok_row_and_says_so(bundle, photos, tmp_path, capsys):
    rows = _serve_rows(bundle, photos, "--out", tmp_path / "p.csv")
    assert rows and all(r["accepted"] == "true" for r in rows)
    assert capsys.readouterr().out.count("has no calibration record") == 1


def test_accepted_is_top1_at_or_above_the_bundles_threshold_with_margin_and_entropy(bundle, photos, tmp_path):
    probe = _serve_rows(bundle, photos, "--out", tmp_path / "probe.csv")
    threshold = float(np.median([float(r["prob"]) for r in probe]))
    rows = _serve_rows(_calibrate(bundle, 1.0, threshold), photos, "--out", tmp_path / "p.csv", "--probs")
    accepted = [r["accepted"] for r in rows]
    assert accepted == ["true" if float(r["prob"]) >= threshold else "false" for r in rows]
    assert "true" in accepted and "false" in accepted
    p = _probs(rows)
    top = -np.sort(-p, axis=1)
    assert np.allclose([float(r["margin"]) for r in rows], top[:, 0] - top[:, 1], atol=2e-6)
    entropy = -(p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1)
    assert np.allclose([float(r["entropy"]) for r in rows], entropy, atol=1e-4)


def test_accept_above_overrides_the_threshold_and_zero_accepts_every_row(bundle, photos, tmp_path):
    _calibrate(bundle, 1.0, 0.99)
    assert {r["accepted"] for r in _serve_rows(bundle, photos, "--out", tmp_path / "a.csv")} == {"false"}
    rows = _serve_rows(bundle, photos, "--out", tmp_path / "b.csv", "--accept-above", 0)
    assert {r["accepted"] for r in rows} == {"true"}


def test_an_unreachable_target_accepts_every_row_and_says_so_once(bundle, photos, tmp_path, capsys):
    rows = _serve_rows(_calibrate(bundle, 1.5, None), photos, "--out", tmp_path / "p.csv")
    assert {r["accepted"] for r in rows} == {"true"}
    assert capsys.readouterr().out.count("could not reach precision 0.95") == 1


def test_the_torch_bundle_applies_its_temperature(bundle, photos, tmp_path):
    raw = _probs(_serve_rows(bundle, photos, "--out", tmp_path / "raw.csv", "--probs"))
    hot = tmp_path / "hot"
    shutil.copytree(bundle, hot)
    scaled = _probs(_serve_rows(_calibrate(hot, 0.25), photos, "--out", tmp_path / "t.csv", "--probs"))
    # softmax(z / T) from softmax(z): p^(1/T), renormalized
    expected = raw**4 / (raw**4).sum(axis=1, keepdims=True)
    assert np.allclose(scaled, expected, atol=1e-4) and not np.allclose(scaled, raw, atol=1e-3)


def test_error_rows_leave_accepted_margin_and_entropy_empty(bundle, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    (row,) = _serve_rows(_calibrate(bundle, 1.0, 0.5), tmp_path / "in", "--out", tmp_path / "p.csv")
    assert row["status"] == "error" and row["accepted"] == row["margin"] == row["entropy"] == ""


def test_jsonl_rows_hold_accepted_as_a_boolean(bundle, photos, tmp_path):
    assert serve(bundle, photos, "--out", tmp_path / "p.jsonl", "--workers", 0) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert all(r["accepted"] is True and isinstance(r["margin"], float) for r in rows)


def test_resume_refuses_a_file_written_with_another_threshold(bundle, photos, tmp_path, capsys):
    out = tmp_path / "p.csv"
    args = (bundle, photos, "--out", out, "--workers", 0)
    assert serve(*args, "--limit", 2, "--accept-above", 0.5) == 0
    assert json.loads((tmp_path / "p.csv.meta.json").read_text())["threshold"] == 0.5
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(*args, "--resume", "--accept-above", 0.6)
    assert exc.value.code == 2
    assert (
        "acceptance threshold (--accept-above, else the model's) 0.5 there, 0.6 now"
        in capsys.readouterr().err
    )
    assert serve(*args, "--resume", "--accept-above", 0.5) == 0 and len(read_rows(out)) == 6


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_accept_above_outside_zero_to_one_is_one_error_line(bundle, photos, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", tmp_path / "p.csv", "--accept-above", value)
    assert exc.value.code == 2 and "--accept-above must be a probability in [0, 1]" in capsys.readouterr().err


def test_evaluate_reports_coverage_accepted_accuracy_ece_and_a_risk_coverage_curve(bundle, photos, tmp_path):
    probe = _serve_rows(bundle, photos, "--out", tmp_path / "probe.csv")
    threshold = float(np.median([float(r["prob"]) for r in probe]))
    out = tmp_path / "p.csv"
    assert serve(_calibrate(bundle, 1.0, threshold), photos, "--out", out, "--evaluate", "--workers", 0) == 0
    rows = read_rows(out)
    metrics = json.loads((tmp_path / "p_eval" / "test_metrics.json").read_text())
    sel = metrics["selective"]
    accepted = [r["accepted"] == "true" for r in rows]
    hits = [r["label"] == r["path"].split("/")[0] for r in rows]
    assert sel["threshold"] == threshold and sel["coverage"] == pytest.approx(np.mean(accepted))
    assert sel["accuracy_accepted"] == pytest.approx(np.mean([h for h, a in zip(hits, accepted) if a]))
    assert sel["accuracy_all"] == pytest.approx(metrics["accuracy"]) and 0 <= sel["ece"] <= 1
    assert (tmp_path / "p_eval" / "risk_coverage.png").is_file()


def test_the_python_api_uses_the_models_threshold_and_accept_above(bundle, photos):
    from serve.api import Classifier

    files = sorted(str(p) for p in photos.rglob("*.jpg"))
    probs = [p.probability for p in Classifier(bundle, device="cpu").predict(files)]
    threshold = float(np.median(probs))
    clf = Classifier(_calibrate(bundle, 1.0, threshold), device="cpu")
    assert clf.threshold == threshold
    assert [p.accepted for p in clf.predict(files)] == [p >= threshold for p in probs]
    assert all(p.accepted for p in Classifier(bundle, device="cpu", accept_above=0).predict(files))
