"""TensorRT engine backend. An engine only runs on the GPU model and TensorRT version it was built for,
so its sidecar is checked against this machine first (core.model_record.check_engine_host) and a
mismatch is refused with the command that rebuilds it."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import UserError
from core.model_record import check_engine_host, read_engine_sidecar
from core.streams import CUDA_STREAMS, CudaStreams
from core.trt_runner import TrtRunner

REBUILD = "rebuild it with `python export/main.py <bundle> --tensorrt`"


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise UserError(
            "serving a .engine needs TensorRT: pip install '.[gpu]' (or serve model.onnx with onnxruntime)"
        ) from None
    return tensorrt


class TensorRTBackend:
    def __init__(self, engine: Path, device: torch.device, streams: CudaStreams = CUDA_STREAMS):
        self.record, facts = read_engine_sidecar(engine)  # check_model's record too
        if device.type != "cuda":
            raise UserError("a TensorRT engine needs a CUDA GPU; serve model.onnx or the bundle on the CPU")
        trt = _import_tensorrt()
        check_engine_host(
            engine,
            facts,
            tensorrt_version=trt.__version__,
            gpu_name=torch.cuda.get_device_name(device),
            compute_capability=torch.cuda.get_device_capability(device),
        )
        self.device = device
        torch.cuda.set_device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runner = TrtRunner(trt, engine.read_bytes(), device, logger, str(engine), streams)
        self.max_batch = self.runner.max_batch
        self.description = (
            f"TensorRT {trt.__version__} engine on {torch.cuda.get_device_name(device)} "
            f"({facts.get('precision', '?')}, max batch {self.max_batch})"
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).cpu()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits on the GPU, not waited for (core.trt_runner: the caller's stream waits for them)."""
        return self.runner.forward(images)
