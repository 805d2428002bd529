"""serve/main.py end to end, in process: the CSV contract, bad files, refusals, labels, evaluate, URLs, --show."""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import CLASSES, NAMES
from tests.serve.helpers import bomb_png, jpeg_bytes, picture, read_rows, save_picture, serve

# --topk defaults to 5; with the fixture's 4 classes the columns are named for the 4 they hold
HEADER = [
    "path",
    "status",
    "label",
    "display_name",
    "prob",
    "accepted",
    "margin",
    "entropy",
    "top4_labels",
    "top4_probs",
    "error",
]


def test_csv_has_the_schema_and_one_row_per_image(bundle, photos, tmp_path):
    save_picture(photos / "2" / "upper.JPEG", seed=7)
    (photos / ".DS_Store").write_bytes(b"\0")
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "preds.csv"
    assert serve(bundle, photos, "--out", out, "--workers", 0) == 0
    assert out.read_text().splitlines()[0] == ",".join(HEADER)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [
        "1/img_0.jpg",
        "1/img_1.jpg",
        "1/img_2.jpg",
        "2/img_0.jpg",
        "2/img_1.jpg",
        "2/img_2.jpg",
        "2/upper.JPEG",
    ]
    for r in rows:
        labels, probs = r["top4_labels"].split("|"), np.array(r["top4_probs"].split("|"), dtype=float)
        assert r["status"] == "ok" and r["error"] == ""
        assert sorted(labels) == CLASSES and labels[0] == r["label"]  # 4 classes: top-4 holds all 4
        assert r["display_name"] == NAMES[CLASSES.index(r["label"])]
        assert float(r["prob"]) == probs[0] and np.all(np.diff(probs) <= 0) and abs(probs.sum() - 1) < 1e-4


def test_bad_files_become_error_rows_and_the_run_exits_0(bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = jpeg_bytes(picture(seed=1, size=(64, 64)))
    (bad / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a JPEG")
    picture(seed=2).convert("CMYK").save(bad / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 40, dtype=np.uint16) * 30).reshape(40, 48)).save(bad / "deep.png")
    pal = picture(seed=3).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(bad / "palette.png", transparency=0)
    bomb_png(bad / "huge.png")
    expected = {
        "truncated.jpg": "truncated",
        "zero.jpg": "empty file",
        "text.jpg": "not an image file",
        "cmyk.jpg": "",
        "deep.png": "",
        "palette.png": "",
        "huge.png": "decompression-bomb",
    }
    if os.geteuid() != 0:  # root reads everything, so the permission case only exists for other users
        save_picture(bad / "locked.jpg").chmod(0)
        expected["locked.jpg"] = "permission denied"
    out = tmp_path / "preds.csv"
    assert serve(bundle, bad, "--out", out, "--workers", 1) == 0
    rows = {r["path"]: r for r in read_rows(out)}
    assert sorted(rows) == sorted(expected)
    for name, reason in expected.items():
        assert rows[name]["status"] == ("error" if reason else "ok"), rows[name]
        assert reason in rows[name]["error"] and (rows[name]["label"] == "") == bool(reason)


def test_existing_output_is_refused_without_resume_or_overwrite(bundle, photos, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    out.write_text("keep me\n")
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", out)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--resume" in err and "--overwrite" in err and "\n" not in err
    assert out.read_text() == "keep me\n"
    assert serve(bundle, photos, "--out", out, "--overwrite", "--workers", 0) == 0
    assert len(read_rows(out)) == 6


def test_labels_come_from_the_model_not_the_input_folders(make_bundle, tmp_path):
    model = make_bundle(
        "cifar_cnn", classes=["daisy", "rose", "tulip"], display_names=["Daisy", "Rose", "Tulip"]
    )
    inputs = tmp_path / "incoming"
    save_picture(inputs / "1" / "a.jpg", seed=1)
    save_picture(inputs / "zebra" / "b.jpg", seed=2)
    (inputs / "cat_to_name.json").write_text(json.dumps({"1": "sunflower", "zebra": "lily"}))
    out = tmp_path / "p.csv"
    serve(model, inputs, "--out", out, "--workers", 0)
    for r in read_rows(out):
        assert r["label"] in ("daisy", "rose", "tulip")
        assert r["display_name"] == r["label"].capitalize()
        assert set(r["top3_labels"].split("|")) == {"daisy", "rose", "tulip"}


def test_probs_columns_and_topk_follow_the_flags(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--probs", "--topk", 2, "--workers", 0, "--limit", 3)
    rows = read_rows(out)
    assert list(rows[0]) == HEADER[:8] + ["top2_labels", "top2_probs", "error"] + [
        f"prob_{c}" for c in CLASSES
    ]
    assert len(rows) == 3
    for r in rows:
        per_class = np.array([float(r[f"prob_{c}"]) for c in CLASSES])
        assert CLASSES[per_class.argmax()] == r["label"] and len(r["top2_labels"].split("|")) == 2


def test_jsonl_rows_are_objects_with_the_same_keys(bundle, photos, tmp_path):
    out = tmp_path / "p.jsonl"
    serve(bundle, photos, "--out", out, "--workers", 0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and list(rows[0]) == HEADER
    assert isinstance(rows[0]["top4_probs"], list) and rows[0]["top4_labels"][0] == rows[0]["label"]


def test_evaluate_writes_accuracy_per_class_and_confusion_matrix(bundle, photos, tmp_path, capsys):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--evaluate", "--workers", 0)
    rows = read_rows(out)
    expected = np.mean([r["label"] == r["path"].split("/")[0] for r in rows])
    metrics = json.loads((tmp_path / "p_eval" / "test_metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["accuracy"] == pytest.approx(expected)
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    assert (tmp_path / "p_eval" / "per_class.csv").is_file()
    assert (tmp_path / "p_eval" / "confusion_matrix.png").is_file()
    assert f"accuracy {expected:.4f}" in capsys.readouterr().out


def test_evaluate_refuses_class_folders_the_model_does_not_know(bundle, tmp_path, capsys):
    save_picture(tmp_path / "labelled" / "9" / "x.jpg")
    with pytest.raises(SystemExit):
        serve(bundle, tmp_path / "labelled", "--out", tmp_path / "p.csv", "--evaluate")
    assert "does not know: 9" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


@pytest.fixture
def http_root(tmp_path):
    """A local web server on 127.0.0.1 serving tmp/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_fetched_and_a_failed_fetch_is_an_error_row(bundle, http_root, tmp_path):
    www, base = http_root
    save_picture(www / "flower.jpg", seed=4)
    out = tmp_path / "p.csv"
    serve(bundle, f"{base}/flower.jpg", f"{base}/missing.jpg", "--out", out, "--workers", 0)
    ok, missing = read_rows(out)
    assert ok["path"] == f"{base}/flower.jpg" and ok["status"] == "ok"
    assert missing["status"] == "error" and "HTTP 404" in missing["error"]


def test_show_prints_topk_display_names_and_saves_the_figure(bundle, http_root, tmp_path, capsys):
    www, base = http_root
    save_picture(www / "flower.jpg", seed=4)
    figure = tmp_path / "fig.png"
    assert serve(bundle, f"{base}/flower.jpg", "--show", "--topk", 3, "--figure", figure) == 0
    printed = capsys.readouterr().out
    assert sum(name in printed for name in NAMES) == 3
    assert Image.open(figure).format == "PNG"


def test_an_unwritable_out_is_one_error_line_not_a_traceback(bundle, photos, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", blocker / "preds.csv", "--workers", 0, "--no-progress")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "preds.csv" in err and "--out" in err


def test_an_unwritable_show_figure_is_one_error_line(bundle, photos, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos / "1" / "img_0.jpg", "--show", "--figure", blocker / "fig.png")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "fig.png" in err and "--figure" in err


@pytest.mark.parametrize(
    "flag, value, needs", [("--eval-dir", "ev", "--evaluate"), ("--figure", "f.png", "--show")]
)
def test_a_flag_without_its_mode_is_refused_not_ignored(bundle, photos, tmp_path, capsys, flag, value, needs):
    out = tmp_path / "p.csv"
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", out, flag, tmp_path / value)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and needs in err and not out.exists()


def test_ctrl_c_ends_with_a_resume_hint_and_exit_130(bundle, photos, tmp_path, capsys, monkeypatch):
    import serve.run as serve_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve_run, "classify", interrupted)
    out = tmp_path / "p.csv"
    assert serve(bundle, photos, "--out", out, "--workers", 0, "--no-progress") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted") and "--resume" in err[-1] and str(out) in err[-1]
