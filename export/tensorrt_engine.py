"""TensorRT: build model.engine from model.onnx, run it on CUDA torch tensors, write and check its sidecar.

tensorrt is imported only inside these functions, so the rest of export never needs it installed.
Written against the TensorRT 10 Python API (explicit batch, named I/O tensors, execute_async_v3).
Not named tensorrt.py: were export/ on sys.path (a script run), that name would shadow the real package.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.fsio import write_bytes_atomic
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, check_engine_host, read_engine_sidecar

PIP_HINT = "--tensorrt needs the tensorrt package, which is not installed: pip install '.[gpu]'"
_LOGGER = None


def require_tensorrt():
    """The tensorrt module, or a one-line UserError saying how to get it (and that it needs a GPU)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but its CUDA libraries are not
        raise UserError(PIP_HINT) from None
    if not torch.cuda.is_available():
        raise UserError("--tensorrt needs an NVIDIA GPU with CUDA, and torch sees none on this machine")
    return trt


def _logger(trt):
    """One logger for every builder and runtime: TensorRT warns when they are given different ones."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


@dataclass
class EngineOptions:
    precision: str = "fp16"
    max_batch: int = 64
    opt_batch: int | None = None  # default: max_batch (serving runs full batches)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    calib_cache: Path | None = None

    def profile(self) -> dict[str, int]:
        return {"min": 1, "opt": self.opt_batch or self.max_batch, "max": self.max_batch}


def host_facts() -> dict[str, Any]:
    """What ties an engine to this machine: TensorRT version, GPU name, compute capability."""
    trt = require_tensorrt()
    return {"tensorrt_version": trt.__version__, "gpu_name": torch.cuda.get_device_name(),
            "compute_capability": list(torch.cuda.get_device_capability())}


# ── build ────────────────────────────────────────────────────────────────────────────────────────────

def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: every network is explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse the ONNX model: {errors}")
    return network, parser  # the parser owns the weights' memory: keep it alive until the build is done


def _shape(batch: int, crop: int) -> tuple[int, int, int, int]:
    return (batch, 3, crop, crop)


def _add_profile(builder, config, crop: int, profile: dict[str, int]):
    p = builder.create_optimization_profile()
    p.set_shape(ONNX_INPUT, *(_shape(profile[k], crop) for k in ("min", "opt", "max")))
    config.add_optimization_profile(p)
    return p


def _load_timing_cache(config, path: Path | None):
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):  # (cache, ignore_mismatch)
        # A cache from another GPU or TensorRT version: start a fresh one rather than fail the build.
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return len(blob)


def _set_precision(trt, builder, config, precision: str, crop: int, calibrator) -> None:
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # true fp32, so the fp32 gate compares like with like
        return
    config.set_flag(trt.BuilderFlag.FP16)  # int8 keeps fp16 for layers without an int8 kernel
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        b = calibrator.get_batch_size()
        cal = builder.create_optimization_profile()
        cal.set_shape(ONNX_INPUT, _shape(b, crop), _shape(b, crop), _shape(b, crop))
        config.set_calibration_profile(cal)


def build_engine(onnx_path: Path, dest: Path, crop: int, opts: EngineOptions,
                 calib_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Build a serialized engine into `dest`; returns build figures. Timing cache read and saved back."""
    trt = require_tensorrt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    _add_profile(builder, config, crop, opts.profile())
    cache_bytes_in = _load_timing_cache(config, opts.timing_cache)
    calibrator = make_calibrator(trt, calib_images, opts.calib_cache) if opts.precision == "int8" else None
    _set_precision(trt, builder, config, opts.precision, crop, calibrator)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError("TensorRT failed to build the engine (see its messages above); try --precision fp32 "
                        "or a larger --workspace-gb")
    with open(dest, "wb") as fh:
        fh.write(serialized)
    if opts.timing_cache is not None:
        write_bytes_atomic(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    del parser
    return {"build_s": round(time.perf_counter() - start, 3), "timing_cache": str(opts.timing_cache),
            "timing_cache_reused_bytes": cache_bytes_in}


def make_calibrator(trt, images: torch.Tensor | None, cache: Path | None, batch: int = 32):
    """An entropy calibrator over uint8 training images; its cache is read when present, and saved."""
    if images is None or len(images) == 0:
        raise UserError("--precision int8 needs calibration images: pass --calib-images DIR (training "
                        "images), or export a bundle whose lineage records its train_dir")
    n = max(batch, (len(images) // batch) * batch)  # whole batches, tiling when there are fewer than one
    data = images[torch.arange(n) % len(images)].contiguous()

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # TensorRT requires the explicit base __init__
            self.batches = list(data.split(batch))
            self.current: torch.Tensor | None = None  # keeps the device buffer alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names):
            if not self.batches:
                return None
            self.current = self.batches.pop(0).cuda().contiguous()
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache is not None and cache.is_file() else None

        def write_calibration_cache(self, blob) -> None:
            if cache is not None:
                write_bytes_atomic(cache, bytes(blob))

    return Calibrator()


# ── sidecar ──────────────────────────────────────────────────────────────────────────────────────────

def sidecar(record_dict: dict[str, Any], opts: EngineOptions, onnx_sha256: str,
            bundle_dir: Path) -> dict[str, Any]:
    """model.engine.json: the bundle record plus what ties the engine to its GPU, TensorRT and ONNX file."""
    engine = {**host_facts(), "precision": opts.precision, "profile": opts.profile(),
              "onnx_sha256": onnx_sha256, "input": ONNX_INPUT, "output": ONNX_OUTPUT,
              "workspace_gb": opts.workspace_gb,
              "bundle_path": str(bundle_dir.resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {"record": record_dict, "engine": engine}


def sidecar_json(side: dict[str, Any]) -> str:
    return json.dumps(side, indent=2) + "\n"


# ── run ──────────────────────────────────────────────────────────────────────────────────────────────

class EngineRunner:
    """logits = runner(uint8 batch): the engine executed on CUDA torch tensors (execute_async_v3)."""

    def __init__(self, blob: bytes):
        trt = require_tensorrt()
        self._trt = trt
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise UserError("TensorRT could not deserialize the engine (corrupt, or from another version); "
                            "rebuild it with `python export/main.py <bundle> --tensorrt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _dtype(self, name: str) -> torch.dtype:
        t = self._trt.DataType
        table = {t.FLOAT: torch.float32, t.HALF: torch.float16, t.INT32: torch.int32, t.INT8: torch.int8,
                 t.UINT8: torch.uint8, t.BOOL: torch.bool}
        return table[self.engine.get_tensor_dtype(name)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            x = x.to("cuda", non_blocking=True).contiguous()
            self.context.set_input_shape(ONNX_INPUT, tuple(x.shape))
            self.context.set_tensor_address(ONNX_INPUT, x.data_ptr())
            outs = {}
            for name in self.outputs:
                outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name),
                                         device="cuda")
                self.context.set_tensor_address(name, outs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            logits = outs[ONNX_OUTPUT].float().cpu()
        self.stream.synchronize()
        return logits


def load_engine(path: Path) -> EngineRunner:
    """Open a model.engine after checking its sidecar against this machine's GPU and TensorRT version."""
    _, facts = read_engine_sidecar(path)
    check_engine_host(path, facts, **host_facts())
    if not Path(path).is_file():
        raise UserError(f"engine not found: {path}")
    return EngineRunner(Path(path).read_bytes())
