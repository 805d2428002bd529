"""A stand-in `tensorrt` module that records what the builder is asked, for tests without TensorRT.

It mimics the TensorRT 10/11 Python API that export and serve use and nothing more; with
`strongly_typed_flag=False` it looks like 11.x, where weak typing (BuilderFlag.FP16/INT8, calibrators) is
gone. The "engine" it builds is the parsed ONNX file's bytes; its Runtime runs such an engine with
onnxruntime on host memory, reading and writing the tensors at the addresses it is given, as TensorRT does
on the device: so core.trt_runner runs for real on CPU tensors.
"""

from __future__ import annotations

import ctypes
import types
from enum import Enum, IntEnum
from pathlib import Path

import numpy as np


def fake_tensorrt(
    version: str = "10.8.0", strongly_typed_flag: bool = True, drop: tuple[str, ...] = (), max_batch: int = 8
):
    calls: dict = {"networks": [], "set_flags": [], "cleared": [], "parsed": [], "enqueued": []}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    flags = {"STRONGLY_TYPED": 1} if strongly_typed_flag else {}
    trt.NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", flags or {"_NONE": 99})
    trt.BuilderFlag = IntEnum("BuilderFlag", {"TF32": 7})  # no FP16/INT8: as on 11.x
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)

    class Profile:
        def set_shape(self, name, *shapes):
            calls["profile"] = (name, shapes)

    class Cache:
        def serialize(self):
            return b"timing"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def add_optimization_profile(self, profile):
            return 0

        def create_timing_cache(self, blob):
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

        def set_flag(self, flag):
            calls["set_flags"].append(flag)

        def clear_flag(self, flag):
            calls["cleared"].append(flag)

    class Network:
        pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls["networks"].append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return Path(calls["parsed"][-1]).read_bytes()

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"].append(path)
            return True

    _runtime(trt, calls, max_batch)
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    for name in drop:
        delattr(trt, name)
    return trt


def _read(ptr: int, shape: tuple, dtype) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(bytes((ctypes.c_uint8 * n).from_address(ptr)), dtype=dtype).reshape(shape)


def _runtime(trt, calls: dict, max_batch: int) -> None:
    """Runtime → engine → execution context, over an ONNX "engine" run by onnxruntime on host memory."""
    trt.TensorIOMode = Enum("TensorIOMode", ["INPUT", "OUTPUT"])
    trt.DataType = Enum("DataType", ["FLOAT", "HALF", "INT32", "INT8", "UINT8", "BOOL"])

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addresses, self.results = engine, None, {}, None

        def set_input_shape(self, name, shape):
            self.shape, self.results = tuple(shape), None

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def _run(self):
            if self.results is None:
                x = _read(self.addresses["images"], self.shape, np.uint8)
                names = [o.name for o in self.engine.session.get_outputs()]
                self.results = dict(zip(names, self.engine.session.run(names, {"images": x})))
            return self.results

        def get_tensor_shape(self, name):
            return self._run()[name].shape

        def execute_async_v3(self, stream_handle):
            calls["enqueued"].append((self.shape, stream_handle))
            for name, value in self._run().items():
                value = np.ascontiguousarray(value, dtype=np.float32)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)
            self.results = None
            return True

    class Engine:
        def __init__(self, blob):
            import onnxruntime

            self.session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
            self.names = ["images"] + [o.name for o in self.session.get_outputs()]
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "images" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.UINT8 if name == "images" else trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, profile):
            built = calls.get("profile")
            if built:
                return list(built[1])
            return [(1, 3, 0, 0), (max_batch, 3, 0, 0), (max_batch, 3, 0, 0)]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            try:
                return Engine(bytes(blob))
            except Exception:  # noqa: BLE001 - TensorRT returns None on a blob it cannot load
                return None

    trt.Runtime = Runtime
