"""Precision variants: fp16 and int8 ONNX files beside model.onnx, each gated on real images, each servable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from core.model_record import read_onnx_record
from export.report import ExportReport
from export.variants import fingerprint, front_nodes
from tests.export.export_helpers import run_export
from tests.serve.helpers import read_rows, serve

VARIANTS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


@pytest.fixture(scope="session")
def variants_export(trained) -> dict:
    """All three variants with the default gate images (valid/) and calibration images (train/)."""
    rc = run_export(trained, "--precision", "fp32,fp16,int8", "--max-batch", 8)
    out = trained.parent / "export"
    return {"rc": rc, "out": out, "report": ExportReport.read(out / "export_report.json")}


def test_three_variants_pass_their_gates_and_lie_beside_each_other(variants_export):
    out, report = variants_export["out"], variants_export["report"]
    assert variants_export["rc"] == 0 and report.status == "passed"
    assert sorted(p.name for p in out.iterdir()) == sorted([*VARIANTS.values(), "export_report.json"])
    table = report.variants
    assert [table[f"onnx {p}"]["status"] for p in VARIANTS] == ["written"] * 3
    assert table["onnx fp16"]["top1_agreement"] >= 0.995
    int8 = table["onnx int8"]
    assert int8["accuracy_torch"] >= 0.75  # a model that has learned something, so the gate means something
    assert int8["accuracy_delta_points"] >= -1.0 and int8["gate"]["max_accuracy_drop_points"] == 1.0
    assert {"torch fp32", "onnx fp32", "onnx fp16", "onnx int8"} <= set(report.bench)
    assert report.bench["onnx fp32"]["vs_onnx_fp32"] == 1.0


def test_each_variants_metadata_round_trips_with_its_precision(variants_export, trained, demo_root):
    bundle = json.loads((trained / "bundle.json").read_text())
    for precision, name in VARIANTS.items():
        record, facts = read_onnx_record(variants_export["out"] / name)
        assert record.to_dict() == bundle and facts["precision"] == precision
    _, facts = read_onnx_record(variants_export["out"] / "model.int8.onnx")
    calib = facts["int8_calibration"]  # `calibration` is the temperature record, in the record itself
    assert (
        calib["images"] == 48
        and calib["root"] == os.path.relpath(demo_root / "train", trained.parent)  # M20: no machine path
        and len(calib["fingerprint"]) == 64
    )
    assert facts["quantization"]["weights"] == "int8 per-channel symmetric"


def test_every_variant_outputs_logits_divided_by_the_temperature_within_its_gate(
    variants_export, trained, demo_root
):
    import onnxruntime as ort
    import torch

    from core.bundle import load_bundle
    from core.images import decode_image
    from core.preprocess import WithPreprocessing, eval_transform

    model, record = load_bundle(trained)
    assert record.temperature == 2.0
    files = sorted((demo_root / "valid").rglob("*.*"))
    x = torch.stack([eval_transform(record.preprocess)(decode_image(f)) for f in files])
    with torch.inference_mode():
        expected = (WithPreprocessing(model, record.preprocess)(x) / 2.0).softmax(1).numpy()
    limits = {"fp32": 1e-4, "fp16": 0.02, "int8": 0.15}  # the gates' spirit: fp32 exact, the others close
    for precision, name in VARIANTS.items():
        sess = ort.InferenceSession(str(variants_export["out"] / name), providers=["CPUExecutionProvider"])
        (logits,) = sess.run(["logits"], {"images": x.numpy()})
        probs = torch.from_numpy(logits).softmax(1).numpy()
        assert np.abs(probs - expected).max() < limits[precision], precision
        assert (probs.argmax(1) == expected.argmax(1)).mean() >= 0.95, precision
        _, facts = read_onnx_record(variants_export["out"] / name)
        assert facts["logits_divided_by_temperature"] == 2.0


def test_variants_keep_the_uint8_in_float32_out_contract_and_a_float32_front(variants_export):
    out = variants_export["out"]
    for name in VARIANTS.values():
        graph = onnx.load(str(out / name)).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    fp16 = onnx.load(str(out / "model.fp16.onnx"))
    first_cast = next(n for n in fp16.graph.node if n.op_type == "Cast")
    assert first_cast.input == ["images"] and first_cast.attribute[0].i == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


def test_int8_is_qdq_with_per_channel_symmetric_weights_and_an_unquantized_front(variants_export):
    model = onnx.load(str(variants_export["out"] / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    front = front_nodes(model)
    assert [n.op_type for n in model.graph.node if n.name in front][0] == "Cast"
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_zps = [
        inits[n.input[2]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4
    ]
    assert weight_zps and all(zp.size > 1 and not zp.any() and zp.dtype == np.int8 for zp in weight_zps)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_serve_classifies_with_a_variant_as_with_fp32(precision, variants_export, demo_root, tmp_path):
    out = variants_export["out"]
    serve(out / "model.onnx", demo_root / "test", "--out", tmp_path / "fp32.csv", "--workers", 0)
    serve(out / VARIANTS[precision], demo_root / "test", "--out", tmp_path / "v.csv", "--workers", 0)
    ref, got = read_rows(tmp_path / "fp32.csv"), read_rows(tmp_path / "v.csv")
    assert [r["path"] for r in ref] == [r["path"] for r in got] and len(ref) == 16
    truth = [Path(r["path"]).parent.name for r in ref]
    acc = {
        k: np.mean([r["label"] == t for r, t in zip(rows, truth)]) for k, rows in (("ref", ref), ("got", got))
    }
    if precision == "fp16":
        assert [r["label"] for r in got] == [r["label"] for r in ref]
    assert (acc["ref"] - acc["got"]) * 100 <= 1.0


def test_int8_calibrated_on_grey_images_fails_its_gate_and_is_not_written(trained, tmp_path, capsys):
    from PIL import Image

    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(8):
        Image.new("RGB", (40, 40), (128, 128, 128)).save(grey / f"grey_{i}.png")
    out = tmp_path / "out"
    assert (
        run_export(
            trained,
            "--precision",
            "fp32,int8",
            "--calib-images",
            grey,
            "--out",
            out,
            "--no-bench",
            "--exporter",
            "torchscript",
        )
        == 1
    )
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx"]
    report = ExportReport.read(out / "export_report.json")
    assert report.status == "failed" and report.failed_variants == ["int8"]
    row = report.variants["onnx int8"]
    assert row["status"] == "failed" and row["top1_agreement"] < 0.95
    assert any(f.startswith("top-1 agreement") for f in row["failures"])
    assert "FAILED: int8" in capsys.readouterr().err


def test_calibration_fingerprint_is_of_the_pixels():
    import torch

    a = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    b = a.clone()
    b[1, 2, 3, 3] = 1
    assert fingerprint(a) == fingerprint(a.clone()) != fingerprint(b)


def test_the_light_copy_of_the_input_name_matches_the_record_module():
    from core.model_record import ONNX_INPUT
    from export import variants

    assert variants.ONNX_INPUT == ONNX_INPUT and tuple(variants.FILES) == ("fp32", "fp16", "int8")


def test_verify_only_holds_a_variant_to_its_own_gate(variants_export, trained, demo_root, tmp_path):
    import shutil

    int8 = tmp_path / "model.int8.onnx"
    shutil.copy(variants_export["out"] / "model.int8.onnx", int8)
    args = ("--verify-only", "--bundle", trained, "--images", demo_root / "valid", "--no-bench")
    assert run_export(int8, *args) == 0
    parity = ExportReport.read(tmp_path / "verify_report.json").parity
    assert list(parity) == ["onnx.int8"] and parity["onnx.int8"]["gate"]["max_accuracy_drop_points"] == 1.0


def test_serving_the_calibrated_bundle_or_its_onnx_gives_the_same_probabilities_and_acceptance(
    variants_export, trained, demo_root, tmp_path
):
    # T is applied once either way: by the torch backend for the bundle, inside the graph for model.onnx
    serve(trained, demo_root / "test", "--out", tmp_path / "torch.csv", "--workers", 0, "--probs")
    serve(
        variants_export["out"] / "model.onnx",
        demo_root / "test",
        "--out",
        tmp_path / "onnx.csv",
        "--workers",
        0,
        "--probs",
    )
    ref, got = read_rows(tmp_path / "torch.csv"), read_rows(tmp_path / "onnx.csv")
    assert [r["accepted"] for r in ref] == [r["accepted"] for r in got]
    for r, g in zip(ref, got):
        assert abs(float(r["prob"]) - float(g["prob"])) < 1e-4
