"""core.metrics, core.figures and core.evaluation (the run report): metric numbers checked by hand, CSVs read back, figures opened and looked into."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings

import matplotlib.colors
import numpy as np
import pytest
import torch
from PIL import Image

from core import evaluation, figures, metrics

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
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # true a, pred a
        [0.6, 0.3, 0.1],  # true b, pred a
        [0.1, 0.2, 0.7],  # true b, pred c
        [0.5, 0.4, 0.1],
    ]
)  # true a, pred a
TARGETS = np.array([0, 1, 1, 0])


def test_classification_metrics_accuracy_loss_and_confusion_by_hand():
    m = metrics.classification_metrics(PROBS, TARGETS, ["a", "b", "c"])
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.2, 0.5])))
    assert m["confusion_matrix"] == [[2, 0, 0], [1, 0, 1], [0, 0, 0]]


def test_per_class_scores_by_hand_left_blank_where_undefined_and_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = metrics.classification_metrics(PROBS, TARGETS, ["a", "b", "c"], ["Ant", "Bee", "Cat"])
    rows = {r["class"]: r for r in m["per_class"]}
    # a: 2 right, 1 false positive (a b predicted as a); recall is what "per-class accuracy" was, so no such key
    assert rows["a"] == {
        "class": "a",
        "display_name": "Ant",
        "support": 2,
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "f1": pytest.approx(0.8),
    }
    # b: never predicted (precision undefined) and missed entirely (recall and F1 are a real 0)
    assert (rows["b"]["support"], rows["b"]["precision"], rows["b"]["recall"], rows["b"]["f1"]) == (
        2,
        None,
        0.0,
        0.0,
    )
    # c: no test image (recall, F1 undefined) but predicted once, wrongly (precision 0)
    assert (rows["c"]["support"], rows["c"]["precision"], rows["c"]["recall"], rows["c"]["f1"]) == (
        0,
        0.0,
        None,
        None,
    )
    assert m["macro_f1"] == pytest.approx(0.4)  # over the classes present: (0.8 + 0) / 2


def test_most_confused_pairs_are_the_largest_off_diagonal_counts_with_names():
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([1, 1, 0, 1, 2, 0, 1, 1, 1])  # a→b twice, b→c once, c→a once, c→b three times
    probs = np.eye(3)[preds]
    m = metrics.classification_metrics(probs, targets, ["a", "b", "c"], ["Ant", "Bee", "Cat"])
    pairs = [(p["true"], p["predicted"], p["count"]) for p in m["most_confused"]]
    assert pairs == [("c", "b", 3), ("a", "b", 2), ("b", "c", 1), ("c", "a", 1)]  # ties in class order
    first = m["most_confused"][0]
    assert (first["true_name"], first["predicted_name"], first["share_of_true"]) == ("Cat", "Bee", 0.75)
    assert len(metrics.most_confused(np.array([[0, 5, 4], [3, 0, 2], [1, 1, 0]]), "abc", "abc", top=2)) == 2


def test_a_perfect_evaluation_lists_no_confused_pairs():
    assert metrics.classification_metrics(np.eye(3), np.arange(3), ["a", "b", "c"])["most_confused"] == []


def test_top5_counts_target_within_five_best():
    probs = np.tile(np.linspace(0.3, 0.01, 7), (2, 1))  # class order by probability: 0,1,...,6
    m = metrics.classification_metrics(probs, np.array([4, 5]), list("abcdefg"))
    assert m["top5"] == pytest.approx(0.5)  # index 4 is 5th best, index 5 is 6th


@pytest.mark.parametrize("classes", [3, 5])
def test_top5_is_left_out_with_five_classes_or_fewer_where_it_is_always_one(classes):
    probs = np.full((2, classes), 1 / classes)
    m = metrics.classification_metrics(probs, np.array([0, 1]), [str(i) for i in range(classes)])
    assert "top5" not in m and "top5_k" not in m


def test_metrics_are_plain_json_types():
    m = metrics.classification_metrics(PROBS.astype(np.float32), TARGETS.astype(np.int32), ["a", "b", "c"])
    assert json.loads(json.dumps(m)) == m


def test_an_empty_evaluation_gives_zeros_not_nan(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluation.write_evaluation(
            tmp_path, np.zeros((0, 2)), np.zeros(0, dtype=np.int64), ["a", "b"], None
        )
    assert (m["n"], m["accuracy"], m["loss"], m["macro_f1"]) == (0, 0.0, 0.0, 0.0)
    assert m["confusion_matrix"] == [[0, 0], [0, 0]] and (tmp_path / "confusion_matrix.png").exists()


def test_metrics_reject_a_probability_column_count_that_does_not_match_classes():
    with pytest.raises(ValueError, match="3 columns but there are 2 classes"):
        metrics.classification_metrics(PROBS, TARGETS, ["a", "b"])


# ─── CSV ───────────────────────────────────────────────────────────────────────────────────────


def test_metrics_csv_header_is_union_of_keys_in_first_seen_order(tmp_path):
    rows = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "valid_top5": 0.9}]
    evaluation.write_metrics_csv(rows, tmp_path / "metrics.csv")
    back = read_csv(tmp_path / "metrics.csv")
    assert list(back[0]) == ["epoch", "train_loss", "valid_top5"]
    assert back[0]["valid_top5"] == "" and back[1]["valid_top5"] == "0.9"


def test_metrics_csv_writes_floats_compactly_and_unwraps_numpy_and_torch_scalars(tmp_path):
    rows = [{"loss": 1 / 3, "lr": 1e-5, "acc": np.float32(0.25), "step": torch.tensor(7)}]
    evaluation.write_metrics_csv(rows, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text().splitlines()[1] == "0.333333,1e-05,0.25,7"


def test_report_files_get_the_permissions_a_plain_open_would_give(tmp_path):
    evaluation.write_metrics_csv([{"epoch": 1}], tmp_path / "metrics.csv")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert os.stat(tmp_path / "metrics.csv").st_mode == os.stat(plain).st_mode  # not mkstemp's 0600


def test_per_class_csv_has_one_row_per_class_and_blank_cells_where_a_score_is_undefined(tmp_path):
    m = metrics.classification_metrics(PROBS, TARGETS, ["a", "b", "c"])
    evaluation.write_per_class_csv(m, tmp_path / "per_class.csv")
    back = read_csv(tmp_path / "per_class.csv")
    assert [r["class"] for r in back] == ["a", "b", "c"]
    assert list(back[0]) == ["class", "display_name", "support", "precision", "recall", "f1"]
    assert (back[0]["precision"], back[0]["f1"]) == ("0.666667", "0.8")
    assert (back[2]["support"], back[2]["recall"], back[2]["f1"]) == ("0", "", "")  # no test image of c


# ─── figures ───────────────────────────────────────────────────────────────────────────────────


def test_batch_grid_draws_the_uint8_pixels_themselves(tmp_path):
    figures.write_batch_grid(solid(ODD, n=3), ["x", "y", "z"], tmp_path / "train_batch.png")
    assert has_color_near(png_colors(tmp_path / "train_batch.png"), ODD, tol=0)


def test_curves_tolerate_missing_columns_and_blank_values(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 1.0, "valid_acc": ""},
        {"epoch": 2, "train_loss": 0.8, "valid_acc": 0.6},
    ]
    figures.plot_curves(rows, tmp_path / "curves.png")
    figures.plot_curves([], tmp_path / "empty.png")
    assert png_colors(tmp_path / "curves.png") and png_colors(tmp_path / "empty.png")


CURVE_ROWS = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "valid_loss": 1.2 / e,
        "train_acc": 0.3 * e,
        "valid_acc": acc,
        "lr": lr,
    }
    for e, acc, lr in ((1, 0.5, 1e-3), (2, 0.7, 5e-4), (3, 0.6, 1e-5))
]


def panel(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title().startswith(title))


def test_curves_have_whole_epoch_ticks_and_a_learning_rate_panel(tmp_path):
    fig = figures.plot_curves(CURVE_ROWS, tmp_path / "curves.png")
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ax.get_title()
    lr = panel(fig, "learning rate")
    assert list(lr.lines[0].get_ydata()) == [1e-3, 5e-4, 1e-5] and lr.get_yscale() == "log"  # 100× decay
    assert Image.open(tmp_path / "curves.png").format == "PNG"


def test_curves_mark_the_best_epoch_with_its_value(tmp_path):
    fig = figures.plot_curves(CURVE_ROWS, tmp_path / "curves.png", best_epoch=2)
    labels = panel(fig, "accuracy").get_legend_handles_labels()[1]
    assert "best epoch 2: valid_acc 0.700" in labels
    assert "best epoch 2: valid_loss 0.600" in panel(fig, "loss").get_legend_handles_labels()[1]
    assert any(list(line.get_xdata()) == [2, 2] for line in panel(fig, "learning rate").lines)  # the vline


def test_curves_draw_top5_only_when_the_rows_have_it(tmp_path):
    without = figures.plot_curves(CURVE_ROWS, tmp_path / "a.png")
    with_top5 = figures.plot_curves([dict(r, valid_top5=0.9) for r in CURVE_ROWS], tmp_path / "b.png")
    assert "valid_top5" not in panel(without, "accuracy").get_legend_handles_labels()[1]
    assert "valid_top5" in panel(with_top5, "accuracy").get_legend_handles_labels()[1]


LONG_NAME = "Very Long Display Name Of A Rare Orchid X"  # 41 characters


def texts(ax, gid: str) -> list[str]:
    """The bar chart's printed probabilities (gid "prob") or class names (gid "name"), top bar first."""
    return [t.get_text() for t in ax.texts if t.get_gid() == gid]


def assert_inside_figure(fig, artists):
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for a in artists:
        ext = a.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1, a.get_text()


def test_topk_figure_prints_each_probability_and_the_prediction_in_the_title(tmp_path):
    fig = figures.plot_topk(
        solid(ODD)[0], np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], 5, tmp_path / "t.png", title="x.jpg"
    )
    ax_bar = fig.axes[1]
    assert texts(ax_bar, "prob") == ["0.60", "0.30", "0.10"] and texts(ax_bar, "name") == ["b", "c", "a"]
    assert fig.get_suptitle() == "x.jpg\nprediction: b (0.60)"


@pytest.mark.parametrize("size", [(96, 32), (32, 96)])  # landscape: bars below, portrait: bars beside
def test_topk_figure_keeps_long_display_names_whole_and_inside_the_figure(tmp_path, size):
    image = Image.new("RGB", size, ODD)
    fig = figures.plot_topk(
        image, np.array([0.7, 0.3]), [LONG_NAME, "b"], 2, tmp_path / "t.png", title="x.jpg"
    )
    assert texts(fig.axes[1], "name")[0] == LONG_NAME
    assert_inside_figure(fig, [*fig.axes[1].texts, *fig.texts])
    assert LONG_NAME in fig.get_suptitle()


@pytest.mark.parametrize("size", [(96, 32), (32, 96)])  # landscape, portrait (width, height)
def test_topk_figure_fits_a_non_square_image_without_empty_bands(tmp_path, size):
    fig = figures.plot_topk(
        Image.new("RGB", size, ODD), np.array([0.7, 0.3]), ["a", "b"], 2, tmp_path / "t.png"
    )
    ax_img = fig.axes[0]
    given, drawn = ax_img.get_position(original=True), ax_img.get_position()
    assert drawn.height / given.height > 0.9 and drawn.width / given.width > 0.9  # the image fills its cell


def test_predictions_grid_bars_show_true_class_green_wrong_prediction_red_and_a_legend_says_so(tmp_path):
    probs = np.array([[0.8, 0.15, 0.05], [0.1, 0.2, 0.7]])
    fig = figures.write_predictions_grid(
        solid(ODD, n=2), probs, np.array([0, 1]), ["a", LONG_NAME, "c"], tmp_path / "p.png"
    )
    bar0, img1, bar1 = fig.axes[2], fig.axes[1], fig.axes[3]  # row-major: images, then bars
    green, red, blue = (matplotlib.colors.to_rgba(c) for c in (figures.GREEN, figures.RED, figures.BLUE))
    assert [p.get_facecolor() for p in bar0.patches] == [green, blue, blue]  # right: a on top, green
    assert [p.get_facecolor() for p in bar1.patches] == [red, green, blue]  # wrong: c red, true class green
    assert texts(bar1, "prob") == ["0.70", "0.20", "0.10"] and texts(bar1, "name")[1] == LONG_NAME
    assert img1.get_title().endswith("pred: c (0.70)")
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "true class" in legend and "wrong prediction" in legend
    assert_inside_figure(fig, bar1.texts)
    given, drawn = img1.get_position(original=True), img1.get_position()
    assert drawn.height / given.height > 0.9 and drawn.width / given.width > 0.9  # no band around the image


def test_topk_figure_accepts_a_pil_image_or_a_uint8_tensor(tmp_path):
    probs = np.array([0.1, 0.6, 0.3])
    figures.plot_topk(
        Image.new("RGB", (20, 20), ODD), probs, ["a", "b", "c"], 5, tmp_path / "pil.png", title="b?"
    )
    figures.plot_topk(solid(ODD)[0], probs, ["a", "b", "c"], 2, tmp_path / "tensor.png")
    assert has_color_near(png_colors(tmp_path / "pil.png"), ODD, tol=0)
    assert has_color_near(png_colors(tmp_path / "tensor.png"), ODD, tol=0)


def test_predictions_grid_titles_right_in_green_and_wrong_in_red(tmp_path):
    probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    fig = figures.write_predictions_grid(
        solid((0, 0, 0), n=2), probs, np.array([0, 1]), ["a", "b"], tmp_path / "p.png"
    )
    assert [ax.title.get_color() for ax in fig.axes[:2]] == [figures.GREEN, figures.RED]
    assert png_colors(tmp_path / "p.png")


def test_confusion_matrix_image_grows_with_the_number_of_classes(tmp_path):
    figures.plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "small.png")
    figures.plot_confusion_matrix(np.eye(60, dtype=int), [f"c{i}" for i in range(60)], tmp_path / "big.png")
    with Image.open(tmp_path / "small.png") as small, Image.open(tmp_path / "big.png") as big:
        assert big.width > 2 * small.width  # 60 labelled ticks need room to stay readable


def test_confusion_matrix_title_stays_inside_the_figure_with_long_class_names(tmp_path):
    names = ["circle", "A very long square display name, 40 char", "triangle", "cross"]  # clipped the title
    fig = figures.plot_confusion_matrix(np.eye(4, dtype=int) * 8, names, tmp_path / "cm.png")
    assert "n=32)" in fig.get_suptitle()
    assert_inside_figure(fig, fig.texts)


def test_a_failed_figure_leaves_no_file_and_no_temp_file(tmp_path):
    with pytest.raises(IndexError):
        figures.plot_topk(solid(ODD)[0], np.array([0.2, 0.8]), ["only-one-name"], 2, tmp_path / "t.png")
    assert only_files(tmp_path) == []


# ─── evaluation files ──────────────────────────────────────────────────────────────────────────


def test_write_evaluation_writes_the_four_files_and_returns_what_the_json_holds(tmp_path):
    images = solid(ODD, n=4)
    m = evaluation.write_evaluation(tmp_path / "run", PROBS, TARGETS, ["a", "b", "c"], None, images=images)
    assert only_files(tmp_path / "run") == [
        "confusion_matrix.png",
        "per_class.csv",
        "predictions.png",
        "test_metrics.json",
    ]
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == m
    assert [r["display_name"] for r in m["per_class"]] == ["a", "b", "c"]  # falls back to folder names


def test_write_evaluation_without_images_skips_predictions_png(tmp_path):
    evaluation.write_evaluation(tmp_path, PROBS, TARGETS, ["a", "b", "c"], ["A", "B", "C"])
    assert "predictions.png" not in only_files(tmp_path)
    assert read_csv(tmp_path / "per_class.csv")[2]["display_name"] == "C"


def test_evaluation_grid_shows_the_rows_its_images_belong_to(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(
        evaluation,
        "write_predictions_grid",
        lambda images, probs, targets, names, path, **kw: seen.update(probs=probs, targets=targets),
    )
    probs = np.eye(4)[[0, 0, 1, 1, 2, 2, 3, 3]].astype(float)
    targets = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    evaluation.write_evaluation(tmp_path, probs, targets, list("abcd"), None, images, image_rows=[0, 2, 4, 6])
    assert seen["targets"].tolist() == [0, 1, 2, 3]
    assert np.array_equal(seen["probs"], probs[[0, 2, 4, 6]])


def test_test_metrics_json_says_which_model_evaluated_which_folder(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    source = evaluation.evaluation_source(model, tmp_path / "data" / "test", images=4)
    evaluation.write_evaluation(tmp_path / "run", PROBS, TARGETS, ["a", "b", "c"], None, source=source)
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["model"]["weights_sha256"] == hashlib.sha256(b"not really onnx").hexdigest()
    assert saved["model"]["path"] == str(model.resolve())
    assert saved["data"] == {"folder": str(tmp_path / "data" / "test"), "images": 4}
    assert list(saved)[:2] == ["model", "data"]  # what was evaluated comes first


def test_a_bundles_identity_is_the_sha256_of_its_weights_file(make_bundle):
    bundle = make_bundle("cifar_cnn", crop=32)
    identity = evaluation.model_identity(bundle)
    assert identity["weights"] == str((bundle / "model.safetensors").resolve())
    assert (
        identity["weights_sha256"] == hashlib.sha256((bundle / "model.safetensors").read_bytes()).hexdigest()
    )
