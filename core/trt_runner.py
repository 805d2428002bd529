"""The one TensorRT runner: a deserialized engine executed on torch tensors (execute_async_v3), used by
export's gate (export/tensorrt_engine.py) and by serve's backend (serve/trt.py).

Stream protocol, the same whatever the caller: the engine runs on the runner's own stream, which first
waits for the caller's current stream (the input may still be being written there: a CUDA input is no
copy, so without the wait the engine could read it early); the input is record_stream'ed on the runner's
stream (the caller may free it while the engine still reads it); the caller's stream then waits for the
runner's, and the logits are record_stream'ed on the caller's stream (made on ours, freed on theirs).
Every max-batch chunk of a larger batch is enqueued before anything waits: enqueueV3 captures shapes and
addresses, so the next chunk may set its own.
"""

from __future__ import annotations

from typing import Any

import torch

from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT
from core.streams import CUDA_STREAMS, CudaStreams, normal_device

_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class TrtRunner:
    """logits = runner(uint8 batch) on the host; runner.forward(batch) leaves them on the device, not
    waited for (the caller's stream is made to wait). `trt` is the tensorrt module (or a test's stand-in)."""

    def __init__(
        self,
        trt: Any,
        blob: bytes,
        device: torch.device | str,
        logger: Any,
        what: str = "the engine",
        streams: CudaStreams = CUDA_STREAMS,
    ):
        self.trt, self.device, self.streams = trt, normal_device(device), streams
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise UserError(
                f"TensorRT could not load {what} (corrupt, or built with another version or GPU); "
                "rebuild it with `python export/main.py <bundle> --tensorrt`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        # every output (logits, and probs when export added it) needs a buffer bound, even unused ones
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.max_batch = int(self.engine.get_tensor_profile_shape(ONNX_INPUT, 0)[2][0])
        self.stream = streams.side(self.device)  # made once per runner
        table = {getattr(trt.DataType, k): v for k, v in _DTYPES.items() if hasattr(trt.DataType, k)}
        self._dtypes = {n: table[self.engine.get_tensor_dtype(n)] for n in self.outputs}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).cpu()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits [N, classes] on the device; the caller's stream waits for them."""
        streams = self.streams
        images = images.to(self.device, non_blocking=True).contiguous()  # on the caller's stream
        caller = streams.current(self.device)
        # the engine reads `images` on our stream: wait for the caller's writes, and keep the memory
        # from being reused before our reads are done
        streams.hand_over(streams.record(caller), self.stream, [images])
        with streams.use(self.stream):
            logits = torch.cat([self._enqueue(part) for part in images.split(self.max_batch)])
        streams.hand_over(streams.record(self.stream), caller, [logits])
        return logits

    def _enqueue(self, images: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape(ONNX_INPUT, tuple(images.shape))
        self.context.set_tensor_address(ONNX_INPUT, images.data_ptr())
        outs = {
            n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self._dtypes[n], device=self.device)
            for n in self.outputs
        }
        for name, out in outs.items():
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outs[ONNX_OUTPUT].float()


__all__ = ["TrtRunner"]
