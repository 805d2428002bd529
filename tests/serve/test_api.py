"""The Python API: Classifier(model).predict([...]) gives the serve CSV's answers, for a bundle and a model.onnx."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.errors import UserError
from serve.api import Classifier, Prediction, is_accepted
from tests.serve.conftest import CLASSES, NAMES
from tests.serve.helpers import export_onnx, read_rows, save_picture, serve


@pytest.fixture(params=["bundle", "onnx"])
def model(request, bundle, tmp_path):
    return bundle if request.param == "bundle" else export_onnx(bundle, tmp_path / "model.onnx")


def test_predictions_are_the_serve_csv_rows(model, photos, tmp_path):
    out = tmp_path / "p.csv"
    assert serve(model, photos, "--out", out, "--workers", 0, "--device", "cpu", "--topk", 3) == 0
    rows = read_rows(out)
    files = [str(photos / r["path"]) for r in rows]
    preds = Classifier(model, device="cpu", topk=3, batch_size=4).predict(files)
    assert [p.source for p in preds] == files
    for row, p in zip(rows, preds):
        assert (p.label, p.display_name, p.accepted, p.error) == (
            row["label"],
            row["display_name"],
            True,
            None,
        )
        assert p.probability == pytest.approx(float(row["prob"]), abs=1e-6)
        assert [label for label, _, _ in p.topk] == row["top3_labels"].split("|")
        assert np.allclose(
            [q for _, _, q in p.topk], np.array(row["top3_probs"].split("|"), float), atol=1e-6
        )
        assert [name for _, name, _ in p.topk] == [NAMES[CLASSES.index(lab)] for lab, _, _ in p.topk]


def test_a_pil_image_gets_the_same_answer_as_its_file(model, photos):
    clf = Classifier(model, device="cpu")
    path = photos / "1" / "img_0.jpg"
    with Image.open(path) as img:
        from_pil, from_path = clf.predict([img, path])
    assert from_pil.source is None and from_path.source == str(path)
    assert from_pil.topk == from_path.topk and from_pil.label == from_path.label


def test_an_unreadable_image_is_an_error_prediction_not_an_exception(bundle, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    good = save_picture(tmp_path / "good.png", seed=1)
    bad, ok = Classifier(bundle, device="cpu").predict([broken, good])
    assert bad.error and "not an image" in bad.error and bad.label is None and not bad.accepted
    assert ok.error is None and ok.label in CLASSES and ok.accepted


def test_a_bundle_file_names_its_bundle_and_a_folder_input_is_refused(bundle, photos):
    clf = Classifier(bundle / "model.safetensors", device="cpu")
    assert clf.model == bundle and clf.classes == tuple(CLASSES)
    with pytest.raises(UserError, match="is a folder"):
        clf.predict([photos])


def test_accepted_is_one_threshold_rule():
    assert is_accepted(0.2, None) and not is_accepted(None, None)
    assert is_accepted(0.9, 0.8) and not is_accepted(0.7, 0.8)
    assert Prediction.__dataclass_params__.frozen
