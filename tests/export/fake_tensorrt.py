"""A stand-in `tensorrt` module that records what the builder is asked, for tests without TensorRT.

It mimics the TensorRT 10/11 Python API that export uses and nothing more; with `strongly_typed_flag=False`
it looks like 11.x, where weak typing (BuilderFlag.FP16/INT8, calibrators) is gone. The "engine" it builds
is the parsed ONNX file's bytes, so a test can run it with onnxruntime.
"""

from __future__ import annotations

import types
from enum import IntEnum
from pathlib import Path


def fake_tensorrt(version: str = "10.8.0", strongly_typed_flag: bool = True, drop: tuple[str, ...] = ()):
    calls: dict = {"networks": [], "set_flags": [], "cleared": [], "parsed": []}
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

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    for name in drop:
        delattr(trt, name)
    return trt
