"""--embeddings: the head's input for every ok row, in row order, with a paths file; refusals in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.bundle import load_bundle
from core.models import head_module
from tests.serve.helpers import export_onnx, read_rows, serve


def test_embeddings_are_the_heads_input_for_every_ok_row_in_row_order(bundle, photos, tmp_path):
    (photos / "2" / "broken.jpg").write_bytes(b"not a jpeg")
    out, npy = tmp_path / "p.csv", tmp_path / "emb.npy"
    assert serve(bundle, photos, "--out", out, "--probs", "--embeddings", npy, "--workers", 0) == 0
    rows = read_rows(out)
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and len(rows) == 7
    features = np.load(npy)
    assert features.dtype == np.float32 and features.shape[0] == 6
    assert json.loads((tmp_path / "emb.paths.json").read_text()) == [r["path"] for r in ok]
    model, _ = load_bundle(bundle)
    with torch.no_grad():  # the head applied to the saved features gives each row's probabilities back
        probs = head_module(model)(torch.from_numpy(features)).softmax(1).numpy()
    expected = np.array([[float(r[f"prob_{c}"]) for c in "1234"] for r in ok])
    assert np.allclose(probs, expected, atol=1e-5)
    assert not list(tmp_path.glob(".emb.npy*"))  # the work file is gone


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--embeddings", "emb.txt"], "must end in .npy"),
        (["--embeddings", "emb.npy", "--resume"], "does not go with --resume"),
    ],
)
def test_embeddings_refusals_are_one_line(bundle, photos, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", tmp_path / "p.csv", *extra)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_embeddings_need_the_bundle_not_an_exported_file(bundle, photos, tmp_path, capsys):
    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    with pytest.raises(SystemExit):
        serve(onnx_path, photos, "--out", tmp_path / "p.csv", "--embeddings", tmp_path / "e.npy")
    assert "--embeddings needs the bundle folder" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()
