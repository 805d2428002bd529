"""core.report: metric numbers checked by hand, CSVs read back, figures opened and looked into."""
from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from core import report

ODD = (200, 40, 120)  # a mid colour: reading uint8 as 0..1 floats would clip it to white


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def png_colors(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return {rgb for _, rgb in img.convert("RGB").getcolors(maxcolors=1 << 24)}


def has_color_near(colors, target, tol: int = 40) -> bool:
    return any(sum(abs(a - b) for a, b in zip(c, target)) <= tol for c in colors)


def solid(color, n: int = 1, size: int = 16) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, size, size).contiguous()


def only_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ─── metrics ───────────────────────────────────────────────────────────────────────────────────

# 4 samples, 3 classes; class "c" never appears as a target and "b" is never predicted.
PROBS = np.array([[0.7, 0.2, 0.1],   # true a, pred a
                  [0.6, 0.3, 0.1],   # true b, pred a
                  [0.1, 0.2, 0.7],   # true b, pred c
                  [0.5, 0.4, 0.1]])  # true a, pred a
TARGETS = np.array([0, 1, 1, 0])


def test_classification_metrics_accuracy_loss_and_confusion_by_hand():
    m = report.classification_metrics(PROBS, TARGETS, ["a", "b", "c"])
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.2, 0.5])))
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 0, 1], [0, 0, 0]]


def test_per_class_precision_recall_with_unseen_and_unpredicted_classes_has_no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = report.classification_metrics(PROBS, TARGETS, ["a", "b", "c"], ["Ant", "Bee", "Cat"])
    rows = {r["class"]: r for r in m["per_class"]}
    assert rows["a"] == {"class": "a", "display_name": "Ant", "support": 2,
                         "accuracy": 1.0, "precision": pytest.approx(2 / 3), "recall": 1.0}
    assert (rows["b"]["support"], rows["b"]["precision"], rows["b"]["recall"]) == (2, 0.0, 0.0)
    assert (rows["c"]["support"], rows["c"]["precision"], rows["c"]["recall"]) == (0, 0.0, 0.0)


def test_top5_counts_target_within_five_best_and_caps_k_at_class_count():
    probs = np.tile(np.linspace(0.3, 0.01, 7), (2, 1))  # class order by probability: 0,1,...,6
    m = report.classification_metrics(probs, np.array([4, 5]), list("abcdefg"))
    assert m["top5"] == pytest.approx(0.5)  # index 4 is 5th best, index 5 is 6th
    assert report.classification_metrics(PROBS, TARGETS, ["a", "b", "c"])["top5"] == 1.0


def test_metrics_are_plain_json_types():
    m = report.classification_metrics(PROBS.astype(np.float32), TARGETS.astype(np.int32), ["a", "b", "c"])
    assert json.loads(json.dumps(m)) == m


def test_an_empty_evaluation_gives_zeros_not_nan(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = report.write_evaluation(tmp_path, np.zeros((0, 2)), np.zeros(0, dtype=np.int64), ["a", "b"], None)
    assert (m["n"], m["accuracy"], m["top5"], m["loss"]) == (0, 0.0, 0.0, 0.0)
    assert m["confusion_matrix"] == [[0, 0], [0, 0]] and (tmp_path / "confusion_matrix.png").exists()


def test_metrics_reject_a_probability_column_count_that_does_not_match_classes():
    with pytest.raises(ValueError, match="3 columns but there are 2 classes"):
        report.classification_metrics(PROBS, TARGETS, ["a", "b"])


# ─── CSV ───────────────────────────────────────────────────────────────────────────────────────

def test_metrics_csv_header_is_union_of_keys_in_first_seen_order(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "valid_top5": 0.9}]
    report.write_metrics_csv(rows, tmp_path / "metrics.csv")
    back = read_csv(tmp_path / "metrics.csv")
    assert list(back[0]) == ["epoch", "train_loss", "valid_top5"]
    assert back[0]["valid_top5"] == "" and back[1]["valid_top5"] == "0.9"


def test_metrics_csv_writes_floats_compactly_and_unwraps_numpy_and_torch_scalars(tmp_path):
    rows = [{"loss": 1 / 3, "lr": 1e-5, "acc": np.float32(0.25), "step": torch.tensor(7)}]
    report.write_metrics_csv(rows, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines()[1] == "0.333333,1e-05,0.25,7"


def test_report_files_get_the_permissions_a_plain_open_would_give(tmp_path):
    report.write_metrics_csv([{"epoch": 1}], tmp_path / "metrics.csv")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "metrics.csv").st_mode == os.stat(plain).st_mode  # not mkstemp's 0600


def test_per_class_csv_has_one_row_per_class(tmp_path):
    m = report.classification_metrics(PROBS, TARGETS, ["a", "b", "c"])
    report.write_per_class_csv(m, tmp_path / "per_class.csv")
    back = read_csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in back] == ["a", "b", "c"]
    assert list(back[0]) == ["class", "display_name", "support", "accuracy", "precision", "recall"]
    assert back[0]["precision"] == "0.666667"


# ─── figures ───────────────────────────────────────────────────────────────────────────────────

def test_batch_grid_draws_the_uint8_pixels_themselves(tmp_path):
    report.write_batch_grid(solid(ODD, n=3), ["x", "y", "z"], tmp_path / "train_batch.png")
    assert has_color_near(png_colors(tmp_path / "train_batch.png"), ODD, tol=0)


def test_curves_tolerate_missing_columns_and_blank_values(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.0, "valid_acc": ""}, {"epoch": 2, "train_loss": 0.8, "valid_acc": 0.6}]
    report.plot_curves(rows, tmp_path / "curves.png")
    report.plot_curves([], tmp_path / "empty.png")
    assert png_colors(tmp_path / "curves.png") and png_colors(tmp_path / "empty.png")


def test_topk_figure_accepts_a_pil_image_or_a_uint8_tensor(tmp_path):
    probs = np.array([0.1, 0.6, 0.3])
    report.plot_topk(Image.new("RGB", (20, 20), ODD), probs, ["a", "b", "c"], 5, tmp_path / "pil.png",
                     title="b?")
    report.plot_topk(solid(ODD)[0], probs, ["a", "b", "c"], 2, tmp_path / "tensor.png")
    assert has_color_near(png_colors(tmp_path / "pil.png"), ODD, tol=0)
    assert has_color_near(png_colors(tmp_path / "tensor.png"), ODD, tol=0)


def test_predictions_grid_titles_right_in_green_and_wrong_in_red(tmp_path):
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    report.write_predictions_grid(solid((0, 0, 0), n=2), probs, np.array([0, 0]), ["a", "b"],
                                  tmp_path / "right.png")
    report.write_predictions_grid(solid((0, 0, 0), n=2), probs, np.array([1, 1]), ["a", "b"],
                                  tmp_path / "wrong.png")
    right, wrong = png_colors(tmp_path / "right.png"), png_colors(tmp_path / "wrong.png")
    red = tuple(int(report.RED[i:i + 2], 16) for i in (1, 3, 5))
    assert has_color_near(wrong, red) and not has_color_near(right, red)


def test_confusion_matrix_image_grows_with_the_number_of_classes(tmp_path):
    report.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "small.png")
    report.plot_confusion_matrix(np.eye(60, dtype=int), [f"c{i}" for i in range(60)], tmp_path / "big.png")
    with Image.open(tmp_path / "small.png") as small, Image.open(tmp_path / "big.png") as big:
        assert big.width > 2 * small.width  # 60 labelled ticks need room to stay readable


def test_a_failed_figure_leaves_no_file_and_no_temp_file(tmp_path):
    with pytest.raises(IndexError):
        report.plot_topk(solid(ODD)[0], np.array([0.2, 0.8]), ["only-one-name"], 2, tmp_path / "t.png")
    assert only_files(tmp_path) == []


# ─── evaluation files ──────────────────────────────────────────────────────────────────────────

def test_write_evaluation_writes_the_four_files_and_returns_what_the_json_holds(tmp_path):
    images = solid(ODD, n=4)
    m = report.write_evaluation(tmp_path / "run", PROBS, TARGETS, ["a", "b", "c"], None, images=images)
    assert only_files(tmp_path / "run") == ["confusion_matrix.png", "per_class.csv", "predictions.png",
                                            "test_metrics.json"]
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == m
    assert [r["display_name"] for r in m["per_class"]] == ["a", "b", "c"]  # falls back to folder names


def test_write_evaluation_without_images_skips_predictions_png(tmp_path):
    report.write_evaluation(tmp_path, PROBS, TARGETS, ["a", "b", "c"], ["A", "B", "C"])
    assert "predictions.png" not in only_files(tmp_path)
    assert read_csv(tmp_path / "per_class.csv")[2]["display_name"] == "C"


def test_evaluation_grid_shows_the_rows_its_images_belong_to(tmp_path, monkeypatch):
    import core.report as report

    seen = {}
    monkeypatch.setattr(report, "write_predictions_grid",
                        lambda images, probs, targets, names, path, **kw: seen.update(probs=probs, targets=targets))
    probs = np.eye(4)[[0, 0, 1, 1, 2, 2, 3, 3]].astype(float)
    targets = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    report.write_evaluation(tmp_path, probs, targets, list("abcd"), None, images, image_rows=[0, 2, 4, 6])
    assert seen["targets"].tolist() == [0, 1, 2, 3]
    assert np.array_equal(seen["probs"], probs[[0, 2, 4, 6]])
