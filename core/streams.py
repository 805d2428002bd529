"""CUDA streams the data paths own: the device in one normal form, a decode stream PyTorch's pool never
hands out, and the few stream operations the pipelines use, behind one object tests can replace.

Why not `torch.cuda.Stream()` for the decode stream: it draws from PyTorch's round-robin pool of 32
streams per priority per device (c10/cuda/CUDAStream.cpp, `kStreamsPerPool = 32`), so the 32nd stream
drawn after it *is* it. A consumer (a feed's side stream) that aliases the decode stream reopens the
pytorch/vision#9606 race. The decode stream here is made with the CUDA driver's `cuStreamCreate`
(non-blocking, in the primary context torch uses) and wrapped with `torch.cuda.ExternalStream`: the pool
never returns it, so no `torch.cuda.Stream()` anywhere in the process can equal it. It is made once per
device and lives as long as the process (never destroyed: a stream outliving its users is harmless).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch

_CU_STREAM_NON_BLOCKING = 1  # no implicit sync with the legacy default stream, where training runs
_decode_streams: dict[torch.device, Any] = {}
_lock = threading.Lock()


def normal_device(device: torch.device | str) -> torch.device:
    """`cuda` → `cuda:<current index>`; everything else as given. The one place this is decided, so the
    device probe and the decoder agree (torchvision recreates, and leaks, its global nvJPEG decoder when
    the device it is given changes, and `cuda` != `cuda:0` to it)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _driver_stream(device: torch.device) -> int:
    """A new non-blocking stream from the CUDA driver, in the device's primary context (torch's)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    with torch.cuda.device(device):
        torch.cuda.synchronize(device)  # the runtime makes the primary context current in this thread
        ctx = ctypes.c_void_p()
        if cuda.cuCtxGetCurrent(ctypes.byref(ctx)) != 0 or not ctx.value:
            raise RuntimeError("no current CUDA context after torch initialised the device")
        handle = ctypes.c_void_p()
        err = cuda.cuStreamCreate(ctypes.byref(handle), ctypes.c_uint(_CU_STREAM_NON_BLOCKING))
        if err != 0:
            raise RuntimeError(f"cuStreamCreate failed with CUDA error {err}")
    return int(handle.value)


def _runtime_stream(device: torch.device) -> int:
    """Fallback: torch's own cudart binding (a blocking stream: it orders with the default stream, which
    costs overlap but is just as safe; it is outside the pool all the same)."""
    handle = ctypes.c_void_p()
    with torch.cuda.device(device):
        err = torch.cuda.cudart().cudaStreamCreate(ctypes.addressof(handle))
    if int(err) != 0 or not handle.value:
        raise RuntimeError(f"cudaStreamCreate failed ({err})")
    return int(handle.value)


def decode_stream(device: torch.device | str) -> Any:
    """The process's decode stream for `device` (created on first use; outside PyTorch's stream pool)."""
    device = normal_device(device)
    with _lock:
        stream = _decode_streams.get(device)
        if stream is None:
            try:
                handle = _driver_stream(device)
            except (OSError, AttributeError, RuntimeError) as exc:
                warnings.warn(
                    f"decode stream from the CUDA runtime instead of the driver ({exc})", stacklevel=2
                )
                handle = _runtime_stream(device)
            stream = _decode_streams[device] = torch.cuda.ExternalStream(handle, device=device)
    return stream


class CudaStreams:
    """The stream operations the data paths need; `FakeStreams`-like stand-ins replace it in CPU tests.

    `side(device)` is None on a CPU device: nothing to overlap, every operation below is then a no-op.
    """

    def side(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode(self, device: torch.device) -> Any:
        return decode_stream(device)

    def current(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device) if device.type == "cuda" else None

    def use(self, stream: Any):
        return torch.cuda.stream(stream) if stream is not None else nullcontext()

    def record(self, stream: Any) -> Any:
        """An event recorded on `stream` now (None without a stream)."""
        if stream is None:
            return None
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def hand_over(self, event: Any, consumer: Any, tensors: Iterable[torch.Tensor]) -> None:
        """`consumer` waits for `event`; the tensors (made on another stream) are then used and freed on
        `consumer`, so the allocator must not reuse them before its work is done."""
        if event is None or consumer is None:
            return
        consumer.wait_event(event)
        for t in tensors:
            t.record_stream(consumer)


CUDA_STREAMS = CudaStreams()


def refuse_alias(consumer: Any, decode: Any) -> None:
    """The stream protocol needs the consumer's stream to be another stream than the decode stream."""
    if consumer is not None and consumer == decode:
        raise RuntimeError(
            "refusing to decode: the caller's current stream is the decode stream, so the decoder's output "
            "could reuse blocks its queued kernels still read (pytorch/vision#9606); run on another stream"
        )


__all__ = ["CUDA_STREAMS", "CudaStreams", "decode_stream", "normal_device", "refuse_alias"]
