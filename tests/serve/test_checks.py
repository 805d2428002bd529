"""A model is checked against its own record at load: input size vs crop, logits width vs classes."""

from __future__ import annotations

import json
import types

import pytest
import torch

from core.bundle import read_record
from core.model_record import ONNX_RECORD_KEY
from serve.checks import check_model
from tests.serve.conftest import CLASSES, NAMES
from tests.serve.helpers import export_onnx, means_onnx, save_picture, serve


def _edit_record(onnx_path, **changes):
    """Rewrite the imgclf record inside model.onnx (what a hand-edited or mixed-up file looks like)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        if prop.key == ONNX_RECORD_KEY:
            record = json.loads(prop.value)
            for key, value in changes.items():
                if key in ("crop", "resize"):
                    record["preprocess"][key] = value
                else:
                    record[key] = value
            prop.value = json.dumps(record)
    onnx.save(proto, str(onnx_path))
    return onnx_path


def _refused(capsys, model, tmp_path) -> str:
    save_picture(tmp_path / "in" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(model, tmp_path / "in", "--out", tmp_path / "p.csv", "--workers", 0, "--no-progress")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "p.csv").exists()
    return err[0]


def test_onnx_input_size_other_than_the_recorded_crop_is_refused(bundle, tmp_path, capsys):
    onnx_path = _edit_record(export_onnx(bundle, tmp_path / "m.onnx"), crop=40, resize=46)
    assert "takes 32×32 images but its record says crop 40" in _refused(capsys, onnx_path, tmp_path)


@pytest.mark.parametrize("trained, recorded", [(3, 4), (4, 3)])
def test_onnx_logits_width_other_than_the_class_count_is_refused(
    make_bundle, tmp_path, capsys, trained, recorded
):
    b = make_bundle("cifar_cnn", crop=32, classes=CLASSES[:trained], display_names=NAMES[:trained])
    onnx_path = _edit_record(
        export_onnx(b, tmp_path / "m.onnx"), classes=CLASSES[:recorded], display_names=NAMES[:recorded]
    )
    err = _refused(capsys, onnx_path, tmp_path)
    assert f"outputs {trained} logits per image but its record lists {recorded} classes" in err


def _dynamic_onnx(path, record: dict, logits: int = 3):
    """Every dim dynamic (N, C, H, W → N, K), so only running the graph tells its width."""
    return means_onnx(path, record, logits, images=["N", "C", "H", "W"], logits=["N", "K"])


def test_dynamic_dims_are_settled_by_one_dummy_batch(bundle, tmp_path, capsys):
    record = read_record(bundle).to_dict()
    err = _refused(capsys, _dynamic_onnx(tmp_path / "dyn.onnx", record, logits=3), tmp_path)
    assert "outputs 3 logits per image but its record lists 4 classes" in err
    out = tmp_path / "ok.csv"
    assert (
        serve(
            _dynamic_onnx(tmp_path / "dyn4.onnx", record, logits=4),
            tmp_path / "in",
            "--out",
            out,
            "--workers",
            0,
        )
        == 0
    )


def test_a_bundle_that_fails_on_its_own_crop_is_refused_at_load(bundle, tmp_path, capsys):
    record_file = bundle / "bundle.json"
    d = json.loads(record_file.read_text())
    d["preprocess"]["crop"], d["preprocess"]["resize"] = 4, 5  # cifar_cnn's 5×5 convs need at least 5 px
    record_file.write_text(json.dumps(d))
    err = _refused(capsys, bundle, tmp_path)
    assert "fails on one 3×3×4×4 batch" in err and "re-copy or re-train" in err


class _FakeEngine:
    """The two ICudaEngine calls the check uses: declared tensor shapes and the optimization profile."""

    def __init__(self, shapes, side=32):
        self.shapes, self.side = shapes, side

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3, self.side, self.side), (8, 3, self.side, self.side), (8, 3, self.side, self.side)]


@pytest.mark.parametrize(
    "shapes, message",
    [
        ({"images": (-1, 3, 64, 64), "logits": (-1, 4)}, "takes 64×64 images but its record says crop 32"),
        ({"images": (-1, 3, 32, 32), "logits": (-1, 3)}, "outputs 3 logits per image but its record lists 4"),
        ({"images": (8, 3, 32, 32), "logits": (8, 4)}, "takes exactly 8 image(s) per call"),
        ({"images": (-1, 3, -1, -1), "logits": (-1, 4), "side": 48}, "built for 48..48 × 48..48 images"),
    ],
)
def test_an_engine_is_checked_against_its_sidecar_record(bundle, tmp_path, shapes, message):
    from core.errors import UserError

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"")
    (tmp_path / "model.engine.json").write_text(
        json.dumps({"record": read_record(bundle).to_dict(), "engine": {}})
    )
    engine_fake = _FakeEngine(shapes, shapes.get("side", 32))
    backend = types.SimpleNamespace(engine=engine_fake, device=torch.device("cpu"))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_model(_Callable(backend, shapes["logits"][1]), engine, "tensorrt")


class _Callable:
    """A backend stub: declared engine shapes, and logits of the given width for any batch."""

    def __init__(self, ns, width):
        self.engine, self.device, self.width = ns.engine, ns.device, width

    def __call__(self, images):
        return torch.zeros((len(images), self.width))


def test_an_engine_matching_its_record_passes(bundle, tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"")
    (tmp_path / "model.engine.json").write_text(
        json.dumps({"record": read_record(bundle).to_dict(), "engine": {}})
    )
    ns = types.SimpleNamespace(
        engine=_FakeEngine({"images": (-1, 3, 32, 32), "logits": (-1, 4)}), device=torch.device("cpu")
    )
    backend = _Callable(ns, 4)
    assert check_model(backend, engine, "tensorrt") is backend
