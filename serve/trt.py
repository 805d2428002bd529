"""TensorRT engine backend. An engine only runs on the GPU model and TensorRT version it was built for,
so its sidecar is checked against this machine first (core.model_record.check_engine_host) and a
mismatch is refused with the command that rebuilds it."""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, check_engine_host, read_engine_sidecar

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
    def __init__(self, engine: Path, device: torch.device):
        _, facts = read_engine_sidecar(engine)
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
        self.device, self.trt = device, trt
        torch.cuda.set_device(device)
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT could not load {engine} (corrupt, or built elsewhere); {REBUILD}")
        self.context = self.engine.create_execution_context()
        self.max_batch = int(self.engine.get_tensor_profile_shape(ONNX_INPUT, 0)[2][0])
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # every output (logits, and probs when export added it) needs a buffer bound, even unused ones
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream(device)
        self.description = (
            f"TensorRT {trt.__version__} engine on {torch.cuda.get_device_name(device)} "
            f"({facts.get('precision', '?')}, max batch {self.max_batch})"
        )

    def _dtype(self, name: str) -> torch.dtype:
        t = self.trt.DataType
        table = {t.FLOAT: torch.float32, t.HALF: torch.float16, t.INT32: torch.int32, t.UINT8: torch.uint8}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).cpu()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits on the GPU, not waited for. Every max-batch chunk is enqueued on one stream and nothing
        syncs in between (an engine built with --max-batch 64 runs a 256 batch as 4 queued runs): enqueueV3
        captures the shapes and addresses, so the next chunk may set its own; the caller's stream waits."""
        images = images.to(self.device, non_blocking=True).contiguous()
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the images were made on the caller's stream
        with torch.cuda.stream(self.stream):
            logits = torch.cat([self._enqueue(part) for part in images.split(self.max_batch)])
        caller.wait_stream(self.stream)
        logits.record_stream(caller)  # made on self.stream, read on the caller's
        images.record_stream(self.stream)  # read by the engine after the caller may have freed it
        return logits

    def _enqueue(self, images: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape(ONNX_INPUT, tuple(images.shape))
        self.context.set_tensor_address(ONNX_INPUT, images.data_ptr())
        outs = {
            n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._dtype(n), device=self.device)
            for n in self.outputs
        }
        for name, out in outs.items():
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outs[ONNX_OUTPUT].float()
