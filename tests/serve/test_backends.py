"""Backends: torch and onnxruntime agree; providers and TensorRT engines are chosen or refused explicitly."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from core.bundle import read_record
from core.errors import UserError
from serve.backends import PROVIDERS, choose_providers
from tests.serve.helpers import export_onnx, read_rows, same_predictions, serve

CPU, CUDA, TRT = PROVIDERS["cpu"], PROVIDERS["cuda"], PROVIDERS["tensorrt"]


def test_torch_and_onnx_backends_give_the_same_predictions(bundle, photos, tmp_path, capsys):
    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    serve(bundle, photos, "--out", tmp_path / "torch.csv", "--workers", 0, "--probs")
    serve(onnx_path, photos, "--out", tmp_path / "onnx.csv", "--workers", 0, "--probs")
    assert "onnxruntime providers: CPUExecutionProvider" in capsys.readouterr().out
    same_predictions(read_rows(tmp_path / "torch.csv"), read_rows(tmp_path / "onnx.csv"), tol=1e-4)


def test_onnx_without_imgclf_metadata_is_refused(bundle, photos, tmp_path, capsys):
    import onnx

    path = export_onnx(bundle, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    with pytest.raises(SystemExit):
        serve(path, photos, "--out", tmp_path / "p.csv")
    assert "no imgclf metadata" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_backend_that_cannot_run_the_file_is_refused(bundle, photos, tmp_path, capsys):
    with pytest.raises(SystemExit):
        serve(bundle, photos, "--out", tmp_path / "p.csv", "--backend", "onnx")
    assert "--backend onnx cannot run" in capsys.readouterr().err


def test_providers_cpu_only_when_the_device_is_the_cpu_or_allowed():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_providers(None, cpu, False, [CUDA, CPU]) == [CPU]
    assert choose_providers(None, gpu, False, [TRT, CUDA, CPU]) == [CUDA]
    assert choose_providers(None, gpu, True, [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(None, gpu, True, [CPU]) == [CPU]
    with pytest.raises(UserError, match="no CUDAExecutionProvider.*--allow-cpu"):
        choose_providers(None, gpu, False, [CPU])


def test_named_providers_are_used_in_order_or_refused_when_missing():
    gpu = torch.device("cuda")
    assert choose_providers(["tensorrt", "cuda"], gpu, False, [TRT, CUDA, CPU]) == [TRT, CUDA]
    with pytest.raises(UserError, match="lacks CUDAExecutionProvider"):
        choose_providers(["cuda", "cpu"], gpu, False, [CPU])


def _engine_with_sidecar(bundle, folder, **facts):
    engine = folder / "model.engine"
    engine.write_bytes(b"not really an engine")
    sidecar = {"record": read_record(bundle).to_dict(), "engine": facts}
    (folder / "model.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_engine_built_for_another_gpu_is_refused_with_a_rebuild_hint(bundle, tmp_path, monkeypatch):
    engine = _engine_with_sidecar(bundle, tmp_path, tensorrt_version="10.3.0", gpu_name="NVIDIA A100-SXM4-80GB",
                                  compute_capability=[8, 0], precision="fp16", profile={"max": 64})
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    from serve.trt import TensorRTBackend

    with pytest.raises(UserError, match=r"another machine: gpu_name NVIDIA A100.*H100.*rebuild it here"):
        TensorRTBackend(engine, torch.device("cuda"))


def test_serving_an_engine_without_a_gpu_is_a_clear_user_error(bundle, photos, tmp_path, capsys):
    engine = _engine_with_sidecar(bundle, tmp_path, tensorrt_version="10.3.0")
    with pytest.raises(SystemExit) as exc:
        serve(engine, photos, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
