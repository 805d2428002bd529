"""Backends: torch and onnxruntime agree; providers and TensorRT engines are chosen or refused explicitly."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from core.bundle import read_record
from core.errors import UserError
from core.ort_session import PROVIDERS
from serve.backends import choose_providers
from tests.serve.helpers import export_onnx, read_rows, same_predictions, serve

CPU, CUDA, TRT = PROVIDERS["cpu"], PROVIDERS["cuda"], PROVIDERS["tensorrt"]


def test_torch_and_onnx_backends_give_the_same_predictions(bundle, photos, tmp_path, capsys):
    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    # --device cpu on both: on a GPU machine torch would run bf16 while onnxruntime's CPU wheel runs fp32
    serve(bundle, photos, "--out", tmp_path / "torch.csv", "--workers", 0, "--probs", "--device", "cpu")
    serve(onnx_path, photos, "--out", tmp_path / "onnx.csv", "--workers", 0, "--probs", "--device", "cpu")
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


def test_backend_is_no_flag_the_file_says_which_runtime_runs_it(bundle, photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", tmp_path / "p.csv", "--backend", "torch")
    assert exc.value.code == 2 and "unrecognized arguments: --backend" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_providers_for_a_model_that_is_not_onnx_are_refused(bundle, photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        serve(bundle, photos, "--out", tmp_path / "p.csv", "--providers", "cpu")
    assert exc.value.code == 2 and "--providers" in capsys.readouterr().err


def test_providers_cpu_only_when_the_device_is_the_cpu_or_allowed():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_providers(None, cpu, False, [CUDA, CPU]) == [CPU]
    assert choose_providers(None, gpu, False, [TRT, CUDA, CPU]) == [CUDA]
    assert choose_providers(None, gpu, True, [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(None, gpu, True, [CPU]) == [CPU]
    assert choose_providers(None, gpu, False, [CPU]) == [CPU]  # the CPU-only wheel on a GPU machine


def test_onnx_on_a_gpu_machine_with_the_cpu_wheel_runs_and_decodes_on_the_cpu(
    bundle, photos, tmp_path, capsys, monkeypatch
):
    import serve.run as serve_run

    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    monkeypatch.setattr(serve_run, "resolve_device", lambda *a: torch.device("cuda"))  # what auto gives there
    assert serve(onnx_path, photos, "--out", tmp_path / "p.csv", "--workers", 0) == 0  # default flags
    start = capsys.readouterr().out.splitlines()[0]
    assert "providers: CPUExecutionProvider" in start and "decoded on the CPU too" in start
    assert "nvJPEG" not in start and "decoding: CPU decoding in the main process" in start
    assert len(read_rows(tmp_path / "p.csv")) == 6


class _FakeSession:
    """Records what onnxruntime was asked for; answers like a session that started every provider."""

    made: dict = {}

    def __init__(self, path, sess_options=None, providers=None):
        _FakeSession.made = {"options": sess_options, "providers": providers}
        self.providers = [p[0] if isinstance(p, tuple) else p for p in providers]

    def get_providers(self):
        return self.providers

    def get_inputs(self):
        return [types.SimpleNamespace(name="images", type="tensor(uint8)", shape=["batch", 3, 32, 32])]

    def get_outputs(self):
        return [types.SimpleNamespace(name="logits", type="tensor(float)", shape=["batch", 4])]


def test_cuda_provider_gets_this_process_gpu_and_heuristic_conv_search(bundle, tmp_path, monkeypatch):
    import onnxruntime as ort

    from serve.backends import OnnxBackend

    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    backend = OnnxBackend(onnx_path, torch.device("cuda", 3), None, False, threads=2)  # rank 3's GPU
    assert _FakeSession.made["providers"] == [(CUDA, {"device_id": 3, "cudnn_conv_algo_search": "HEURISTIC"})]
    assert _FakeSession.made["options"].intra_op_num_threads == 2
    assert backend.device == torch.device("cuda", 3)  # batches are decoded and bound on that GPU
    OnnxBackend(onnx_path, torch.device("cuda", 1), ["tensorrt", "cuda"], False)
    assert _FakeSession.made["providers"] == [
        (TRT, {"device_id": 1}),
        (CUDA, {"device_id": 1, "cudnn_conv_algo_search": "HEURISTIC"}),
    ]


def test_gpu_index_without_an_index_is_the_local_rank_when_torch_sees_no_gpu(monkeypatch):
    from serve.backends import gpu_index

    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_index(torch.device("cuda", 2)) == 2
    assert gpu_index(torch.device("cuda")) == 5


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
    engine = _engine_with_sidecar(
        bundle,
        tmp_path,
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA A100-SXM4-80GB",
        compute_capability=[8, 0],
        precision="fp16",
        profile={"max": 64},
    )
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    from serve.trt import TensorRTBackend

    with pytest.raises(UserError, match=r"another machine: gpu_name NVIDIA A100.*H100.*rebuild it here"):
        TensorRTBackend(engine, torch.device("cuda"))


def test_an_engine_is_served_through_the_shared_runner_with_its_stream_protocol(
    bundle, tmp_path, monkeypatch
):
    """serve/trt.py over core.trt_runner, with the fake TensorRT (an ONNX "engine" run by onnxruntime at the
    tensors' addresses) and fake streams, on the CPU: the logits, the chunking by the engine's max batch, and
    the waits in both directions are the real runner's."""
    import onnxruntime

    import serve.trt as st
    from core.trt_runner import TrtRunner
    from tests.export.fake_tensorrt import fake_tensorrt
    from tests.fake_streams import FakeStreams

    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    engine = _engine_with_sidecar(
        bundle, tmp_path, tensorrt_version="10.8.0", gpu_name="Fake GPU", compute_capability=[9, 0]
    )
    engine.write_bytes(onnx_path.read_bytes())
    trt = fake_tensorrt(max_batch=4)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "set_device", lambda *a: None)
    streams = FakeStreams()
    on_cpu = lambda trt_, blob, device, logger, what, s: TrtRunner(trt_, blob, "cpu", logger, what, s)  # noqa: E731
    monkeypatch.setattr(st, "TrtRunner", on_cpu)
    backend = st.TensorRTBackend(engine, torch.device("cuda", 0), streams)
    crop = read_record(bundle).preprocess.crop
    images = torch.randint(0, 256, (6, 3, crop, crop), dtype=torch.uint8)
    want = onnxruntime.InferenceSession(str(onnx_path)).run(["logits"], {"images": images.numpy()})[0]
    got = backend(images)
    assert torch.allclose(got, torch.from_numpy(want), atol=1e-5)
    own = backend.runner.stream
    assert [shape[0] for shape, _ in trt.calls["enqueued"]] == [4, 2]  # max batch 4: two queued runs
    assert {handle for _, handle in trt.calls["enqueued"]} == {own.cuda_stream}  # on the runner's stream
    # the runner's stream waits for the caller's before reading the input, the caller's for the logits
    assert streams.events("wait") == [("wait", own, streams.default), ("wait", streams.default, own)]
    assert streams.events("record_stream") == [
        ("record_stream", own, 1),
        ("record_stream", streams.default, 1),
    ]


def test_serving_an_engine_without_a_gpu_is_a_clear_user_error(bundle, photos, tmp_path, capsys):
    engine = _engine_with_sidecar(bundle, tmp_path, tensorrt_version="10.3.0")
    with pytest.raises(SystemExit) as exc:
        serve(engine, photos, "--out", tmp_path / "p.csv", "--device", "cpu")
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_onnx_variant_precision_comes_from_its_export_facts_then_its_name(tmp_path):
    from serve.backends import onnx_precision

    assert onnx_precision(tmp_path / "model.onnx", {"precision": "int8"}) == "int8"
    assert onnx_precision(tmp_path / "model.fp16.onnx", {}) == "fp16"
    assert onnx_precision(tmp_path / "model.int8.onnx", {"precision": 16}) == "int8"
    assert onnx_precision(tmp_path / "model.onnx", {"precision": "bogus"}) == "fp32"
    assert onnx_precision(tmp_path / "my.model.onnx", []) == "fp32"


def test_serve_prints_the_variant_precision_and_its_threads(bundle, photos, tmp_path, capsys):
    import onnx

    path = export_onnx(bundle, tmp_path / "model.fp16.onnx")  # an fp32 graph is enough for the metadata path
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "imgclf.export", json.dumps({"precision": "fp16", "opset": 17})
    onnx.save(proto, str(path))
    assert serve(path, photos, "--out", tmp_path / "p.csv", "--workers", 0, "--threads", 1) == 0
    start = capsys.readouterr().out.splitlines()[0]
    assert "(fp16 model.fp16.onnx, intra-op threads: 1)" in start and "| 1 model thread(s) |" in start


def test_threads_reach_onnxruntime_and_torch(bundle, tmp_path):
    from serve.backends import open_backend

    before = torch.get_num_threads()
    try:
        onnx = open_backend(export_onnx(bundle, tmp_path / "model.onnx"), torch.device("cpu"), threads=1)
        assert onnx.session.get_session_options().intra_op_num_threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_default_threads_are_the_cpus_left_after_the_decode_workers(monkeypatch):
    import os

    from serve.backends import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_threads(workers=3) == 5
    assert default_threads(workers=3, world=2) == 1
    assert default_threads(workers=12) == 1


@pytest.mark.gpu
def test_onnx_cuda_provider_binds_gpu_batches_and_matches_the_cpu_provider(bundle, tmp_path):
    import onnxruntime as ort

    from serve.backends import OnnxBackend

    if CUDA not in ort.get_available_providers():
        pytest.skip("onnxruntime here is the CPU-only wheel")
    path = export_onnx(bundle, tmp_path / "model.onnx")
    gpu = OnnxBackend(path, torch.device("cuda", 0), None, False)
    cpu = OnnxBackend(path, torch.device("cpu"), None, False)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    logits = gpu.forward(x.cuda())
    assert logits.is_cuda and torch.allclose(logits.cpu(), cpu(x), atol=1e-3)


# ── decode workers vs model threads, decided before the workers fork ─────────────────────────────


@pytest.mark.parametrize(
    "cores, kind, want",
    [
        (2, "cuda", (1, 1)),
        (16, "cuda", (15, 1)),  # the GPU runs the model: the CPUs decode
        (64, "cuda", (16, 48)),  # decode workers capped at 16
        (2, "cpu", (1, 1)),
        (16, "cpu", (4, 12)),  # a CPU model is the bottleneck: it gets most cores
        (64, "cpu", (16, 48)),
    ],
)
def test_thread_plan_follows_where_the_model_runs(cores, kind, want):
    from core.workers import plan_threads

    assert plan_threads(cores, kind) == want
    workers, threads = plan_threads(cores, kind)
    assert workers + threads <= max(cores, 2)


def test_thread_plan_splits_cores_between_processes_and_keeps_explicit_choices():
    from core.workers import plan_threads

    assert plan_threads(64, "cpu", world=4) == (4, 12)
    assert plan_threads(16, "cpu", workers=0) == (0, 16)
    assert plan_threads(16, "cuda", threads=3) == (15, 3)
    assert plan_threads(1, "cpu") == (0, 1)
    with pytest.raises(ValueError, match="valid: cuda, cpu"):
        plan_threads(16, "tensorrt")


def test_backend_kind_is_known_before_the_backend_opens(bundle, tmp_path):
    from serve.threads import backend_kind

    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    gpu, cpu_only, with_cuda = torch.device("cuda", 0), [CPU], [CUDA, CPU]
    assert backend_kind(onnx_path, gpu, None, cpu_only) == "cpu"  # the CPU-only wheel on a GPU box
    assert backend_kind(onnx_path, gpu, None, with_cuda) == "cuda"
    assert backend_kind(onnx_path, gpu, ["cpu"], with_cuda) == "cpu"  # --providers cpu
    assert backend_kind(bundle, gpu, None, cpu_only) == "cuda" and backend_kind(engine, gpu, None) == "cuda"
    assert backend_kind(bundle, torch.device("cpu"), None) == "cpu"


def test_serve_on_a_gpu_box_with_cpu_only_onnxruntime_sizes_for_a_cpu_model(bundle, tmp_path, monkeypatch):
    import serve.threads as threads

    onnx_path = export_onnx(bundle, tmp_path / "model.onnx")
    monkeypatch.setattr(threads, "usable_cpus", lambda: 16)
    monkeypatch.setattr(threads, "available_providers", lambda: [CPU])
    assert threads.serve_threads(onnx_path, torch.device("cuda"), None, 1, None, None) == (4, 12)
    assert threads.serve_threads(bundle, torch.device("cuda"), None, 1, None, None) == (15, 1)
