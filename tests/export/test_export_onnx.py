"""model.onnx: the serve contract (uint8 `images` in, `logits` out, dynamic batch), and the record inside."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

from core.bundle import WEIGHTS_FILE, load_bundle, read_record
from core.images import decode_image
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, ONNX_PROBS, read_onnx_record, sha256_file
from core.preprocess import WithPreprocessing, eval_transform
from export.onnx_export import OPSET
from tests.export.export_helpers import run_export, save_tiny_bundle


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_default_output_is_the_export_folder_beside_the_bundle(resnet_export):
    assert resnet_export["rc"] == 0
    assert sorted(p.name for p in resnet_export["out"].iterdir()) == ["export_report.json", "model.onnx"]


def test_graph_takes_uint8_images_with_dynamic_batch_and_returns_logits(resnet_export):
    model = onnx.load(str(resnet_export["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == (ONNX_INPUT, onnx.TensorProto.UINT8)
    assert isinstance(_dims(inp)[0], str) and _dims(inp)[1:] == [3, 32, 32]
    assert (out.name, out.type.tensor_type.elem_type) == (ONNX_OUTPUT, onnx.TensorProto.FLOAT)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", OPSET)}


def test_metadata_carries_the_bundle_record(resnet_export):
    record, facts = read_onnx_record(resnet_export["onnx"])
    bundle = read_record(resnet_export["bundle"])
    assert record.classes == bundle.classes == ["1", "2", "3", "4"]
    assert record.display_names == ["circle", "square", "triangle", "cross"]
    assert record.preprocess == bundle.preprocess
    assert record.to_dict() == bundle.to_dict()


def test_metadata_carries_the_export_facts(resnet_export):
    _, facts = read_onnx_record(resnet_export["onnx"])
    assert facts["exporter"] == "dynamo" and facts["opset"] == OPSET
    assert facts["torch"] == torch.__version__ and facts["onnx"] == onnx.__version__
    assert facts["weights_sha256"] == sha256_file(resnet_export["bundle"] / WEIGHTS_FILE)
    assert facts["outputs"] == [ONNX_OUTPUT]


@pytest.fixture(scope="module")
def session_and_reference(resnet_export):
    model, record = load_bundle(resnet_export["bundle"])
    sess = ort.InferenceSession(str(resnet_export["onnx"]), providers=["CPUExecutionProvider"])
    return sess, WithPreprocessing(model, record.preprocess), eval_transform(record.preprocess)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_one_file_runs_at_batch_1_7_and_32_with_torch_answers(session_and_reference, demo_root, batch):
    sess, reference, transform = session_and_reference
    files = sorted((demo_root / "valid").rglob("*.*"))
    x = torch.stack([transform(decode_image(files[i % len(files)])) for i in range(batch)])
    (logits,) = sess.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})
    with torch.inference_mode():
        expected = reference(x)
    assert logits.shape == (batch, 4)
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_cifar_cnn_exports_with_either_exporter_and_says_which(tmp_path, demo_root, exporter):
    bundle = save_tiny_bundle(tmp_path / "cnn" / "best", arch="cifar_cnn")
    assert (
        run_export(
            bundle,
            "--images",
            demo_root / "valid",
            "--exporter",
            exporter,
            "--no-bench",
            "--out",
            tmp_path / "out",
        )
        == 0
    )
    _, facts = read_onnx_record(tmp_path / "out" / "model.onnx")
    assert facts["exporter"] == exporter


def test_probs_output_is_softmax_of_logits(tmp_path, demo_root):
    bundle = save_tiny_bundle(tmp_path / "cnn" / "best", arch="cifar_cnn")
    assert (
        run_export(
            bundle,
            "--images",
            demo_root / "valid",
            "--exporter",
            "torchscript",
            "--probs",
            "--no-bench",
            "--out",
            tmp_path,
        )
        == 0
    )
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8).numpy()
    logits, probs = sess.run([ONNX_OUTPUT, ONNX_PROBS], {ONNX_INPUT: x})
    torch.testing.assert_close(torch.from_numpy(probs), torch.from_numpy(logits).softmax(1))


def test_a_calibrated_bundle_exports_logits_divided_by_its_temperature(tmp_path, demo_root):
    from core.bundle import load_bundle, read_record, write_record
    from core.calibration import CalibrationRecord
    from core.preprocess import WithPreprocessing

    bundle = save_tiny_bundle(tmp_path / "cnn" / "best", arch="cifar_cnn")
    record = read_record(bundle)
    record.calibration = CalibrationRecord(
        temperature=3.0, threshold=0.4, target_precision=0.9, target_reached=True
    )
    write_record(bundle, record)
    args = ["--images", demo_root / "valid", "--exporter", "torchscript", "--probs", "--no-bench"]
    assert run_export(bundle, *args, "--out", tmp_path / "out") == 0
    onnx_path = tmp_path / "out" / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    logits, probs = sess.run([ONNX_OUTPUT, ONNX_PROBS], {ONNX_INPUT: x.numpy()})
    model, _ = load_bundle(bundle)
    with torch.inference_mode():
        raw = WithPreprocessing(model, record.preprocess)(x)
    torch.testing.assert_close(torch.from_numpy(logits), raw / 3.0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(probs), (raw / 3.0).softmax(1), atol=1e-5, rtol=1e-4)
    embedded, facts = read_onnx_record(onnx_path)
    assert embedded.calibration == record.calibration and facts["logits_divided_by_temperature"] == 3.0


def test_default_output_is_beside_the_bundle_even_when_it_is_given_as_dot(tmp_path, monkeypatch):
    bundle = save_tiny_bundle(tmp_path / "run" / "best", arch="cifar_cnn")
    monkeypatch.chdir(bundle)
    assert run_export(".", "--exporter", "torchscript", "--no-bench") == 0
    assert (tmp_path / "run" / "export" / "model.onnx").is_file()
    assert not (bundle / "export").exists()
