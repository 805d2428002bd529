"""TensorRT: an engine is tied to its GPU and TensorRT version; building and gating need a GPU."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from core.errors import UserError
from core.model_record import check_engine_host, read_engine_sidecar, sha256_file
from tests.export.export_helpers import run_export

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0],
         "precision": "fp16", "profile": {"min": 1, "opt": 256, "max": 256},
         "bundle_path": "/runs/flowers/best"}
HERE = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)}
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="tensorrt not installed")


def test_engine_is_accepted_on_the_gpu_and_version_it_was_built_for():
    check_engine_host("model.engine", BUILT, **HERE)


@pytest.mark.parametrize("change", [{"tensorrt_version": "10.8.0"}, {"gpu_name": "NVIDIA A100-SXM4-40GB",
                                                                     "compute_capability": [8, 0]}])
def test_engine_from_another_gpu_or_tensorrt_is_refused_with_the_rebuild_command(change):
    with pytest.raises(UserError) as err:
        check_engine_host("model.engine", BUILT, **{**HERE, **change})
    message = str(err.value)
    assert "python export/main.py /runs/flowers/best --tensorrt --engine-from fp16 --max-batch 256" in message
    assert all(str(v) in message for v in change.values())


@pytest.mark.gpu
@needs_tensorrt
def test_fp16_engine_is_built_gated_and_described_by_its_sidecar(make_bundle, demo_root, tmp_path):
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="resnet18"), "--images", demo_root / "valid", "--tensorrt",
                      "--max-batch", 32, "--out", out) == 0
    record, engine = read_engine_sidecar(out / "model.engine")
    assert record.classes == ["1", "2", "3", "4"]
    assert engine["precision"] == "fp16" and engine["profile"] == {"min": 1, "opt": 32, "max": 32}
    assert engine["onnx_sha256"] == sha256_file(out / "model.onnx")
    assert engine["gpu_name"] == torch.cuda.get_device_name()
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity"]["tensorrt"]["top1_agreement"] >= 0.995
    assert (out / "timing.cache").stat().st_size > 0


@pytest.mark.gpu
@needs_tensorrt
def test_loading_an_engine_with_a_foreign_sidecar_is_refused(make_bundle, demo_root, tmp_path):
    from export.tensorrt_engine import load_engine

    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--images", demo_root / "valid", "--tensorrt",
                      "--engine-from", "fp32", "--max-batch", 8, "--no-bench", "--out", out) == 0
    load_engine(out / "model.engine")  # its own machine: accepted
    side = out / "model.engine.json"
    d = json.loads(side.read_text())
    d["engine"]["tensorrt_version"] = "9.0.0"
    side.write_text(json.dumps(d))
    with pytest.raises(UserError, match="rebuild it here"):
        load_engine(out / "model.engine")
