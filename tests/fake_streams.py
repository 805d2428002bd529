"""Stand-in CUDA streams for CPU tests of the stream protocols (core.streams.CudaStreams' interface).

They record what a real run would do on the GPU: which stream work was issued on, who waited on whom,
which tensors were handed over, and how many streams were drawn (each `torch.cuda.Stream()` is a draw
from PyTorch's 32-stream pool).
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager

import torch


class FakeStream:
    _ids = itertools.count()

    def __init__(self, kind: str):
        self.kind, self.id = kind, next(self._ids)
        self.cuda_stream = 1000 + self.id  # the handle TensorRT's execute_async_v3 takes

    def __repr__(self) -> str:
        return f"<{self.kind} stream {self.id}>"


class FakeStreams:
    def __init__(self, device_like_cuda: bool = True):
        self.default = FakeStream("default")
        self.decode_stream = FakeStream("decode")
        self.sides: list[FakeStream] = []  # every side stream drawn (a pool draw on CUDA)
        self.log: list[tuple] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def _stack(self) -> list:
        if not hasattr(self._local, "stack"):
            self._local.stack = [self.default]
        return self._local.stack

    def side(self, device):
        with self._lock:
            self.sides.append(FakeStream("side"))
            return self.sides[-1]

    def decode(self, device):
        return self.decode_stream

    def current(self, device):
        return self._stack()[-1]

    @contextmanager
    def use(self, stream):
        self._stack().append(stream)
        try:
            yield
        finally:
            self._stack().pop()

    def record(self, stream):
        with self._lock:
            self.log.append(("record", stream))
        return ("event", stream)

    def hand_over(self, event, consumer, tensors):
        tensors = list(tensors)
        with self._lock:
            self.log.append(("wait", consumer, event[1]))
            self.log.append(("record_stream", consumer, len(tensors)))

    def events(self, kind: str) -> list[tuple]:
        return [e for e in self.log if e[0] == kind]


def fake_decoder(streams: FakeStreams):
    """A decoder that returns tensors and remembers on which stream it was called."""
    calls = []

    def decode(blobs, device):
        calls.append(streams.current(device))
        return [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in blobs]

    decode.calls = calls
    return decode
