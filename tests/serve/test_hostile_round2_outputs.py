"""Hostile input, round 2 (issue 19), serve side: model records checked when read, numbers that cannot lie,
spreadsheet-safe cells, and a Ctrl-C that never hangs (M4, M8, M9, M10, M25). Memory, time and depth bounds
are in test_hostile_round2.py. Each test is named for its item."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core.bundle import RECORD_FILE
from core.model_record import ONNX_RECORD_KEY
from tests.serve.helpers import (
    exits_within,
    means_onnx,
    read_rows,
    save_picture,
    serve,
    start_serve,
    wait_rows,
)

# ─── M4: model record values validated when read, serve and export alike ──────────────────────


BAD_RECORDS = {
    "not-an-object": lambda d: [d],
    "negative-crop": lambda d: {**d, "preprocess": {**d["preprocess"], "crop": -5}},
    "crop-60000": lambda d: {**d, "preprocess": {**d["preprocess"], "crop": 60000}},
    "unknown-interpolation": lambda d: {**d, "preprocess": {**d["preprocess"], "interpolation": "lanczos9"}},
    "duplicate-classes": lambda d: {**d, "classes": ["1", "1", "3", "4"]},
}
BAD_REASONS = {
    "not-an-object": "not a JSON object",
    "negative-crop": "preprocess.crop",
    "crop-60000": "preprocess.crop",
    "unknown-interpolation": "preprocess.interpolation",
    "duplicate-classes": "twice",
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_m4_a_bad_record_is_one_line_exit_2_in_serve(bundle, tmp_path, capsys, case):
    path = bundle / RECORD_FILE
    path.write_text(json.dumps(BAD_RECORDS[case](json.loads(path.read_text()))))
    save_picture(tmp_path / "in" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(bundle, tmp_path / "in", "--out", tmp_path / "p.csv", "--workers", 0, "--no-progress")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and BAD_REASONS[case] in err[0], err
    assert not (tmp_path / "p.csv").exists()


def test_m4_crop_60000_is_refused_under_a_memory_cap(bundle, tmp_path):
    """The record's crop is checked before anything is sized from it: under a 6 GB address-space cap the
    run is one line and exit 2 (unchecked, the crop's buffers alone passed 6 GB)."""
    from tests.serve.test_hostile_round2 import run_capped

    path = bundle / RECORD_FILE
    path.write_text(json.dumps(BAD_RECORDS["crop-60000"](json.loads(path.read_text()))))
    save_picture(tmp_path / "in" / "a.png")
    r = run_capped(bundle, tmp_path / "in", "--out", tmp_path / "p.csv", "--workers", 0, "--no-progress")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "preprocess.crop" in err[0], r.stderr[-2000:]


@pytest.mark.parametrize("case", ["crop-60000", "duplicate-classes", "not-an-object"])
def test_m4_a_bad_record_is_one_line_exit_2_in_export(bundle, tmp_path, capsys, case):
    from tests.export.export_helpers import run_export

    path = bundle / RECORD_FILE
    path.write_text(json.dumps(BAD_RECORDS[case](json.loads(path.read_text()))))
    capsys.readouterr()
    assert run_export(bundle, "--out", tmp_path / "dist", "--no-bench") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and BAD_REASONS[case] in err[0], err
    assert not (tmp_path / "dist" / "model.onnx").exists()


def test_m4_an_onnx_record_is_validated_too(bundle, tmp_path):
    from core.errors import UserError
    from core.model_record import read_onnx_record
    from tests.serve.helpers import export_onnx

    onnx_path = export_onnx(bundle, tmp_path / "m.onnx")
    import onnx

    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        if prop.key == ONNX_RECORD_KEY:
            prop.value = json.dumps(BAD_RECORDS["crop-60000"](json.loads(prop.value)))
    onnx.save(proto, str(onnx_path))
    with pytest.raises(UserError, match="preprocess.crop"):
        read_onnx_record(onnx_path)


# ─── M8, M9: graphs that produce NaN, or the wrong number of rows ─────────────────────────────


def _graph(path: Path, record: dict, kind: str) -> Path:
    """uint8 images → [N, 4] logits: `nan` = 0/0 in every cell; `one_row` = [1, 4] for any batch."""
    from onnx import helper

    if kind == "nan":
        tail = [
            helper.make_node("Sub", ["cols", "cols"], ["zero"]),
            helper.make_node("Div", ["zero", "zero"], ["logits"]),
        ]
    else:
        tail = [helper.make_node("ReduceMean", ["cols"], ["logits"], axes=[0], keepdims=1)]
    return means_onnx(path, record, 4, tail)


def test_m8_nan_output_is_an_error_row_never_ok(bundle, tmp_path, capsys):
    record = json.loads((bundle / RECORD_FILE).read_text())
    for i in range(3):
        save_picture(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "p.csv"
    model = _graph(tmp_path / "nan.onnx", record, "nan")
    assert serve(model, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress") == 0
    rows = read_rows(out)
    assert len(rows) == 3 and all(r["status"] == "error" and "NaN/Inf" in r["error"] for r in rows)
    assert "0 ok, 3 errors" in capsys.readouterr().out


def test_m9_a_graph_with_one_row_per_batch_is_refused_at_start(bundle, tmp_path, capsys):
    record = json.loads((bundle / RECORD_FILE).read_text())
    save_picture(tmp_path / "in" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(_graph(tmp_path / "one.onnx", record, "one_row"), tmp_path / "in", "--out", tmp_path / "p.csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "returns 1 rows of logits for a batch of 3" in err[0]
    assert not (tmp_path / "p.csv").exists()


# ─── M10: spreadsheet-safe name cells ─────────────────────────────────────────────────────────

FORMULAS = ["=1+1", "+cmd", "-2", "@SUM(A1)"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_m10_formula_cells_get_a_quote_in_csv_only(make_bundle, tmp_path, fmt):
    b = make_bundle(
        "cifar_cnn", crop=32, classes=FORMULAS, display_names=['=HYPERLINK("x")', "\tt", "\rr", "@n"]
    )
    save_picture(tmp_path / "in" / "=evil.png")
    out = tmp_path / f"p.{fmt}"
    assert serve(b, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress", "--topk", 4) == 0
    if fmt == "jsonl":
        row = json.loads(out.read_text().splitlines()[0])
        assert row["label"] in FORMULAS and set(row["top4_labels"]) == set(FORMULAS)
        return
    (row,) = read_rows(out)
    assert row["label"].startswith("'") and row["label"][1:] in FORMULAS
    assert row["display_name"].startswith("'")
    assert sorted(c[1:] for c in row["top4_labels"].split("|")) == sorted(FORMULAS)
    assert row["path"] == "=evil.png"  # the resume key keeps its own (reversible) escaping
    assert (
        serve(b, tmp_path / "in", "--out", out, "--resume", "--workers", 0, "--no-progress", "--topk", 4) == 0
    )
    assert len(read_rows(out)) == 1  # resume still recognises the row


# ─── M25: Ctrl-C, repeated, to the whole process group ────────────────────────────────────────


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")
@pytest.mark.parametrize("attempt", [0, 1, pytest.param(2, marks=pytest.mark.slow)])
def test_m25_repeated_ctrl_c_never_hangs_or_prints_a_traceback(bundle, tmp_path, attempt):
    out = tmp_path / "p.csv"
    proc = start_serve(bundle, tmp_path, out)
    wait_rows(proc, out, 2 + attempt * 4)
    for _ in range(6):  # an impatient user: Ctrl-C again and again, into the cleanup
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.03 * (attempt + 1))
    exits_within(proc, 90, "repeated Ctrl-C")
    err = proc.stderr.read().decode().strip().splitlines()
    assert proc.returncode == 130, err
    assert len(err) == 1 and err[0].startswith("interrupted"), err
