"""What serve reports beside the rows: top-k column names, --evaluate files, the --show figure, empty inputs."""

from __future__ import annotations

import hashlib
import json

from PIL import Image

from serve.writer import Layout
from tests.serve.conftest import CLASSES, NAMES
from tests.serve.helpers import read_rows, save_picture, serve

LONG_NAME = "Very Long Display Name Of A Rare Orchid X"  # 41 characters


def test_topk_columns_are_named_for_the_k_actually_used():
    four = (tuple(CLASSES), tuple(NAMES))
    assert Layout(*four, topk=100).topk_columns == ("top4_labels", "top4_probs")
    assert Layout(*four, topk=5).columns == Layout(*four, topk=4).columns  # same file either way
    assert Layout(*four, topk=2).topk_columns == ("top2_labels", "top2_probs")


def test_a_file_resumes_under_a_topk_above_the_class_count(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--workers", 0, "--limit", 2, "--topk", 100)
    assert serve(bundle, photos, "--out", out, "--workers", 0, "--resume") == 0  # default --topk 5: also top4
    rows = read_rows(out)
    assert len(rows) == 6 and all(len(r["top4_labels"].split("|")) == 4 for r in rows)


def test_an_empty_input_folder_warns_and_writes_no_rows(bundle, tmp_path, capsys):
    empty = tmp_path / "incoming"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")
    out = tmp_path / "p.csv"
    assert serve(bundle, empty, "--out", out, "--workers", 0, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "warning: no images found in" in err and str(empty) in err
    assert read_rows(out) == []


def test_evaluate_records_model_folder_scores_and_confusions(bundle, photos, tmp_path, capsys):
    out = tmp_path / "p.csv"
    save_picture(photos / "loose.jpg", seed=3)  # outside a class folder: counted as excluded
    serve(bundle, photos, "--out", out, "--evaluate", "--workers", 0, "--no-progress")
    metrics = json.loads((tmp_path / "p_eval" / "test_metrics.json").read_text())
    weights = (bundle / "model.safetensors").read_bytes()
    assert metrics["model"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert metrics["data"] == {"folder": str(photos.resolve()), "images": 7, "excluded": 1}
    assert "top5" not in metrics  # 4 classes: every class is in the top 5
    assert set(metrics["per_class"][0]) == {"class", "display_name", "support", "precision", "recall", "f1"}
    wrong = sum(r["label"] != r["path"].split("/")[0] for r in read_rows(out) if "/" in r["path"])
    assert sum(p["count"] for p in metrics["most_confused"]) == wrong  # 4 classes: 12 pairs, all listed
    printed = capsys.readouterr().out
    assert "macro F1" in printed and "top-5" not in printed


def test_show_draws_a_non_square_image_with_a_long_display_name(make_bundle, tmp_path, capsys):
    model = make_bundle("cifar_cnn", crop=32, classes=["a", "b"], display_names=[LONG_NAME, "short"])
    image = save_picture(tmp_path / "wide.png", size=(120, 40))
    figure = tmp_path / "fig.png"
    assert serve(model, image, "--show", "--figure", figure) == 0
    assert LONG_NAME in capsys.readouterr().out
    with Image.open(figure) as png:
        assert png.format == "PNG" and png.width > png.height  # a landscape image, a wide figure
