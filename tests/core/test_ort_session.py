"""core.ort_session: the one onnxruntime session builder, as serve and export's gate use it."""

from __future__ import annotations

import pytest
import torch

from core import ort_session
from core.errors import UserError

CPU, CUDA, TRT = (ort_session.PROVIDERS[k] for k in ("cpu", "cuda", "tensorrt"))


class FakeSession:
    """Records what onnxruntime was asked for; starts only the providers in `starts`."""

    starts: tuple[str, ...] = (TRT, CUDA, CPU)
    made: dict = {}

    def __init__(self, path, sess_options=None, providers=None):
        FakeSession.made = {"path": path, "options": sess_options, "providers": providers}
        self.providers = [p[0] for p in providers if p[0] in FakeSession.starts]

    def get_providers(self):
        return self.providers


@pytest.fixture
def fake_ort(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT, CUDA, CPU])
    monkeypatch.setattr(FakeSession, "starts", (TRT, CUDA, CPU))
    return FakeSession


def test_options_give_each_process_its_gpu_and_the_gate_exact_fp32():
    assert ort_session.provider_options([TRT, CUDA, CPU], device_id=2) == [
        (TRT, {"device_id": 2}),
        (CUDA, {"device_id": 2, "cudnn_conv_algo_search": "HEURISTIC"}),
        (CPU, {}),
    ]
    ((_, cuda),) = ort_session.provider_options([CUDA], exact_fp32=True)
    assert cuda == {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


def test_short_names_map_in_order_and_a_missing_one_is_named():
    assert ort_session.provider_names(["tensorrt", " cuda", ""], [TRT, CUDA, CPU]) == [TRT, CUDA]
    with pytest.raises(UserError, match=r"lacks CUDAExecutionProvider \(available: CPUExecutionProvider\)"):
        ort_session.provider_names(["cuda"], [CPU])


def test_threads_and_quiet_logs_reach_the_session(fake_ort, tmp_path):
    ort_session.open_session(tmp_path / "m.onnx", [(CPU, {})], threads=3)
    assert fake_ort.made["options"].intra_op_num_threads == 3
    assert fake_ort.made["options"].log_severity_level == 3


def test_a_provider_that_did_not_start_is_refused_unless_not_required(fake_ort, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeSession, "starts", (CPU,))  # CUDA's libraries failed to load
    chain = ort_session.provider_options([CUDA, CPU])
    with pytest.raises(UserError, match="could not start CUDAExecutionProvider.*--allow-cpu"):
        ort_session.open_session(tmp_path / "m.onnx", chain, must_start=[CUDA])
    assert ort_session.open_session(tmp_path / "m.onnx", chain).get_providers() == [CPU]


def test_a_file_onnxruntime_cannot_load_is_one_user_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(UserError, match=r"onnxruntime cannot load .*bad\.onnx"):
        ort_session.open_session(bad, [(CPU, {})])


def test_export_gate_asks_for_its_provider_chain_with_torch_threads(fake_ort, tmp_path, monkeypatch):
    from export import verify

    verify.ort_session(tmp_path / "m.onnx", "cuda", allow_cpu=False)
    assert fake_ort.made["providers"] == [
        (CUDA, {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}),
        (CPU, {}),
    ]
    assert fake_ort.made["options"].intra_op_num_threads == torch.get_num_threads()
    monkeypatch.setattr(FakeSession, "starts", (CPU,))
    with pytest.raises(UserError, match="could not start CUDAExecutionProvider"):
        verify.ort_session(tmp_path / "m.onnx", "cuda", allow_cpu=False)
    assert verify.ort_session(tmp_path / "m.onnx", "cuda", allow_cpu=True).get_providers() == [CPU]


def test_export_gate_without_the_gpu_wheel_falls_back_only_when_allowed(monkeypatch):
    import onnxruntime as ort

    from export import verify

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])
    with pytest.raises(UserError, match="--provider tensorrt needs onnxruntime's TensorrtExecutionProvider"):
        verify.provider_chain("tensorrt", allow_cpu=False)
    assert verify.provider_chain("tensorrt", allow_cpu=True) == [(CPU, {})]
