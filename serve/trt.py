"""TensorRT engine backend. An engine only runs on the GPU model and TensorRT version it was built for,
so the sidecar's facts are checked against this machine first and a mismatch is refused with a fix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, read_engine_sidecar

# The sidecar key for each fact, with the spellings export might use.
FACT_KEYS = {
    "tensorrt": ("tensorrt", "tensorrt_version", "trt_version"),
    "gpu": ("gpu", "gpu_name", "device_name"),
    "compute_capability": ("compute_capability", "sm", "cc"),
}
REBUILD = "rebuild it on this machine: python export/main.py <bundle> --tensorrt"


def normalize_cc(value: Any) -> str:
    """(9, 0) | [9, 0] | "9.0" | "sm_90" | 90 → "9.0"."""
    if isinstance(value, (list, tuple)):
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).lower().removeprefix("sm_").removeprefix("sm")
    return text if "." in text else f"{text[:-1]}.{text[-1]}"


def engine_facts(facts: dict[str, Any]) -> dict[str, str]:
    found = {}
    for fact, keys in FACT_KEYS.items():
        value = next((facts[k] for k in keys if k in facts), None)
        if value is not None:
            found[fact] = normalize_cc(value) if fact == "compute_capability" else str(value)
    return found


def running_facts(trt_version: str, device: torch.device) -> dict[str, str]:
    major, minor = torch.cuda.get_device_capability(device)
    return {"tensorrt": trt_version, "gpu": torch.cuda.get_device_name(device),
            "compute_capability": f"{major}.{minor}"}


def check_engine_matches(engine: Path, built: dict[str, str], here: dict[str, str]) -> None:
    """Refuse an engine built for another GPU or TensorRT version (it would fail or misbehave)."""
    diffs = [f"{k} {built[k]!r} (engine) vs {here[k]!r} (here)" for k in here if k in built and built[k] != here[k]]
    if diffs:
        raise UserError(f"{engine} was built for another setup: {'; '.join(diffs)}; {REBUILD}, "
                        "or serve the portable model.onnx instead")


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError("serving a .engine needs TensorRT: pip install '.[gpu]' (or serve model.onnx "
                        "with onnxruntime)") from None
    return tensorrt


class TensorRTBackend:
    def __init__(self, engine: Path, device: torch.device):
        _, facts = read_engine_sidecar(engine)
        if device.type != "cuda":
            raise UserError("a TensorRT engine needs a CUDA GPU; serve model.onnx or the bundle on the CPU")
        trt = _import_tensorrt()
        check_engine_matches(engine, engine_facts(facts), running_facts(trt.__version__, device))
        self.device = device
        torch.cuda.set_device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(engine.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not load {engine} (corrupt or built elsewhere); {REBUILD}")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(self.engine.get_tensor_profile_shape(ONNX_INPUT, 0)[2][0])
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # every output (logits, and probs when export added it) needs a buffer bound, even unused ones
        self.outputs = {n: (int(self.engine.get_tensor_shape(n)[-1]), dtypes[self.engine.get_tensor_dtype(n)])
                        for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}
        self.stream = torch.cuda.Stream(device)
        self.description = f"TensorRT {trt.__version__} engine on {torch.cuda.get_device_name(device)} " \
                           f"(max batch {self.max_batch})"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous()
        return torch.cat([self._run(part) for part in images.split(self.max_batch)]).cpu()

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        outs = {n: torch.empty((len(images), c), dtype=dt, device=self.device) for n, (c, dt) in self.outputs.items()}
        self.context.set_input_shape(ONNX_INPUT, tuple(images.shape))
        self.context.set_tensor_address(ONNX_INPUT, images.data_ptr())
        for name, out in outs.items():
            self.context.set_tensor_address(name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outs[ONNX_OUTPUT].float()
