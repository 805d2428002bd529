"""TensorRT: strongly typed engines from a chosen ONNX variant, tied to their GPU and TensorRT version.

The build logic runs here against a stand-in tensorrt module (tests/export/fake_tensorrt.py); the real
build and its gate are the `gpu` tests at the end.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from core.errors import UserError
from core.model_record import check_engine_host, read_engine_sidecar, read_onnx_record, sha256_file
from export import report as rep
from export import tensorrt_engine as te
from export.cli import parse
from export.report import ExportReport
from tests.export.export_helpers import run_export
from tests.export.fake_tensorrt import fake_tensorrt
from tests.fake_streams import FakeStreams

BUILT = {
    "tensorrt_version": "10.3.0",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "compute_capability": [9, 0],
    "precision": "fp16",
    "profile": {"min": 1, "opt": 256, "max": 256},
    "run": "flowers",
    "bundle": "best",
}
HERE = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)}
needs_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None, reason="tensorrt not installed"
)


def test_engine_is_accepted_on_the_gpu_and_version_it_was_built_for():
    check_engine_host("model.engine", BUILT, **HERE)


@pytest.mark.parametrize(
    "change",
    [{"tensorrt_version": "10.8.0"}, {"gpu_name": "NVIDIA A100-SXM4-40GB", "compute_capability": [8, 0]}],
)
def test_engine_from_another_gpu_or_tensorrt_is_refused_with_the_rebuild_command(change):
    with pytest.raises(UserError) as err:
        check_engine_host("model.engine", BUILT, **{**HERE, **change})
    message = str(err.value)
    assert "python export/main.py runs/flowers/best --tensorrt --engine-from fp16 --max-batch 256" in message
    assert all(str(v) in message for v in change.values())


@pytest.fixture
def with_trt(monkeypatch):
    """Install a fake tensorrt and pretend CUDA is there; returns the installer for other versions."""

    def install(*args, **kwargs):
        trt = fake_tensorrt(*args, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        return trt

    return install


@pytest.mark.parametrize(
    "version,has_flag,flags", [("10.8.0", True, 1 << 1), ("11.4.0", False, 0), ("11.4.0", True, 1 << 1)]
)
def test_engine_is_strongly_typed_with_no_precision_flags_or_calibrator(
    version, has_flag, flags, with_trt, tmp_path
):
    trt = with_trt(version, strongly_typed_flag=has_flag)
    onnx_file = tmp_path / "model.int8.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    info = te.build_engine(
        onnx_file,
        tmp_path / "model.engine",
        32,
        te.EngineOptions(source="int8", max_batch=8, timing_cache=tmp_path / "t.cache"),
    )
    assert trt.calls["networks"] == [flags] and trt.calls["parsed"] == [str(onnx_file)]
    assert trt.calls["set_flags"] == [] and trt.calls["cleared"] == [trt.BuilderFlag.TF32]
    assert trt.calls["profile"] == ("images", ((1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32)))
    assert info["engine_from"] == "int8" and info["strongly_typed"] and info["tensorrt_version"] == version
    assert not hasattr(te, "make_calibrator")


@pytest.mark.parametrize("version", ["8.6.1", "12.0.0"])
def test_an_unsupported_tensorrt_version_is_one_line_naming_it_and_the_pin(version, with_trt):
    with_trt(version)
    with pytest.raises(UserError) as err:
        te.require_tensorrt()
    assert str(err.value) == (
        f"TensorRT {version} is installed; export builds engines with TensorRT 10.x or "
        "11.x: pip install 'tensorrt>=10,<12'"
    )


@pytest.mark.parametrize("drop", ["MemoryPoolType", "OnnxParser"])
def test_a_tensorrt_api_missing_at_run_time_names_the_installed_version(drop, with_trt, tmp_path):
    with_trt("11.4.0", strongly_typed_flag=False, drop=(drop,))
    with pytest.raises(
        UserError,
        match=r"^the installed TensorRT 11\.4\.0 lacks an API export uses .*"
        f"{drop}.*tensorrt>=10,<12",
    ):
        te.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", 32, te.EngineOptions())


def test_10x_without_the_strongly_typed_flag_is_refused_not_built_weakly(with_trt, tmp_path):
    with_trt("10.0.1", strongly_typed_flag=False)
    with pytest.raises(UserError, match="TensorRT 10.0.1 lacks .*STRONGLY_TYPED"):
        te.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", 32, te.EngineOptions())


@pytest.mark.parametrize(
    "argv,precisions,engine_from,activations",
    [
        (["--tensorrt"], ["fp32", "fp16"], "fp16", "uint8"),
        (["--tensorrt", "--engine-from", "int8"], ["fp32", "int8"], "int8", "int8"),
        (["--tensorrt", "--engine-from", "fp32", "--precision", "fp16"], ["fp32", "fp16"], "fp32", "uint8"),
        (["--precision", "int8,fp32"], ["fp32", "int8"], None, "uint8"),
    ],
)
def test_engine_from_adds_its_variant_and_int8_for_tensorrt_is_symmetric(
    argv, precisions, engine_from, activations
):
    job = parse(["bundle", *argv])
    assert (job.precisions, job.engine_from, job.int8_activations) == (
        tuple(precisions),
        engine_from,
        activations,
    )


def test_uint8_activations_cannot_feed_a_tensorrt_engine():
    with pytest.raises(UserError, match="TensorRT takes only symmetric int8 activations"):
        parse(["bundle", "--tensorrt", "--engine-from", "int8", "--int8-activations", "uint8"])


def test_export_builds_the_engine_from_the_chosen_variant_and_its_sidecar_says_so(
    trained, with_trt, monkeypatch, tmp_path
):
    with_trt("11.4.0", strongly_typed_flag=False)
    monkeypatch.setattr(
        te,
        "host_facts",
        lambda: {"tensorrt_version": "11.4.0", "gpu_name": "Fake GPU", "compute_capability": [9, 0]},
    )
    monkeypatch.setattr(rep, "machine", lambda: {"cpu_threads": 1, "gpu": "Fake GPU"})
    # the fake "engine" is the ONNX variant itself, run by the fake runtime with onnxruntime through the
    # shared runner (core.trt_runner, the same as serve's), on the CPU with fake streams
    streams, real_runner = FakeStreams(), te.EngineRunner
    monkeypatch.setattr(te, "EngineRunner", lambda blob: real_runner(blob, device="cpu", streams=streams))
    out = tmp_path / "out"
    assert (
        run_export(
            trained, "--tensorrt", "--out", out, "--no-bench", "--exporter", "torchscript", "--max-batch", 8
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "export_report.json",
        "model.engine",
        "model.engine.json",
        "model.fp16.onnx",
        "model.onnx",
        "timing.cache",
    ]
    _, engine = read_engine_sidecar(out / "model.engine")
    assert engine["engine_from"] == "model.fp16.onnx" and engine["precision"] == "fp16"
    assert engine["onnx_sha256"] == sha256_file(out / "model.fp16.onnx") and engine["strongly_typed"]
    report = ExportReport.read(out / "export_report.json")
    assert report.parity["tensorrt"]["passed"] and report.variants["tensorrt"]["status"] == "written"
    trt = sys.modules["tensorrt"]
    assert trt.calls["enqueued"] and all(shape[0] <= 8 for shape, _ in trt.calls["enqueued"])  # max batch 8
    waits = streams.events("wait")  # every run: the engine waits for the caller, the caller for the engine
    assert waits and len(waits) % 2 == 0
    assert all(a[1] is b[2] and a[2] is b[1] for a, b in zip(waits[::2], waits[1::2]))


@pytest.mark.gpu
@needs_tensorrt
def test_fp16_engine_is_built_gated_and_described_by_its_sidecar(make_bundle, demo_root, tmp_path):
    out = tmp_path / "out"
    assert (
        run_export(
            make_bundle(arch="resnet18"),
            "--images",
            demo_root / "valid",
            "--tensorrt",
            "--max-batch",
            32,
            "--out",
            out,
        )
        == 0
    )
    record, engine = read_engine_sidecar(out / "model.engine")
    assert record.classes == ["1", "2", "3", "4"]
    assert engine["precision"] == "fp16" and engine["profile"] == {"min": 1, "opt": 32, "max": 32}
    assert engine["engine_from"] == "model.fp16.onnx" and engine["strongly_typed"]
    assert engine["onnx_sha256"] == sha256_file(out / "model.fp16.onnx")
    assert engine["gpu_name"] == torch.cuda.get_device_name()
    report = ExportReport.read(out / "export_report.json")
    assert report.parity["tensorrt"]["top1_agreement"] >= 0.995
    assert (out / "timing.cache").stat().st_size > 0


@pytest.mark.gpu
@needs_tensorrt
def test_loading_an_engine_with_a_foreign_sidecar_is_refused(make_bundle, demo_root, tmp_path):
    from serve.trt import TensorRTBackend  # what opens an engine: serve (export only builds and gates it)

    out = tmp_path / "out"
    assert (
        run_export(
            make_bundle(arch="cifar_cnn"),
            "--images",
            demo_root / "valid",
            "--tensorrt",
            "--engine-from",
            "fp32",
            "--max-batch",
            8,
            "--no-bench",
            "--out",
            out,
        )
        == 0
    )
    TensorRTBackend(out / "model.engine", torch.device("cuda"))  # its own machine: accepted
    side = out / "model.engine.json"
    d = json.loads(side.read_text())
    d["engine"]["tensorrt_version"] = "9.0.0"
    side.write_text(json.dumps(d))
    with pytest.raises(UserError, match="rebuild it here"):
        TensorRTBackend(out / "model.engine", torch.device("cuda"))


@pytest.mark.gpu
@needs_tensorrt
def test_int8_engine_is_built_from_the_qdq_variant_and_passes_its_gate(trained, tmp_path):
    out = tmp_path / "out"
    assert (
        run_export(
            trained, "--tensorrt", "--engine-from", "int8", "--max-batch", 8, "--no-bench", "--out", out
        )
        == 0
    )
    _, engine = read_engine_sidecar(out / "model.engine")
    assert engine["engine_from"] == "model.int8.onnx" and engine["precision"] == "int8"
    _, facts = read_onnx_record(out / "model.int8.onnx")
    assert facts["quantization"]["activations"] == "int8 symmetric"  # what explicit quantization takes
    assert ExportReport.read(out / "export_report.json").parity["tensorrt"]["passed"]
