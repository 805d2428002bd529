"""TensorRT: build model.engine from one ONNX variant, open it with core.trt_runner, write its sidecar.

tensorrt is imported only inside these functions, so the rest of export never needs it installed.
Precision lives in the ONNX file (fp32, fp16 graph, int8 Q/DQ): the network is strongly typed, the
only kind TensorRT 11 builds (10.x: the STRONGLY_TYPED flag), with no builder precision flags and no
calibrator. Not named tensorrt.py: were export/ on sys.path (a script run), that would shadow the package.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.fsio import write_bytes_atomic
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, bundle_ref
from core.streams import CUDA_STREAMS, CudaStreams
from core.trt_runner import TrtRunner

PIP_HINT = "--tensorrt needs the tensorrt package, which is not installed: pip install '.[gpu]'"
SUPPORTED_MAJORS = (10, 11)  # 10.x: strongly typed on request; 11.x: always. Matches the gpu extra's pin.
PIN = "pip install 'tensorrt>=10,<12'"
_LOGGER = None


def require_tensorrt(need_gpu: bool = True):
    """The tensorrt module of a supported version, or a one-line UserError saying how to get one."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there but its CUDA libraries are not
        raise UserError(PIP_HINT) from None
    check_version(trt)
    if need_gpu and not torch.cuda.is_available():
        raise UserError("--tensorrt needs an NVIDIA GPU with CUDA, and torch sees none on this machine")
    return trt


def version_of(trt) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def check_version(trt) -> None:
    version = version_of(trt)
    major = version.split(".")[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        raise UserError(
            f"TensorRT {version} is installed; export builds engines with TensorRT 10.x or 11.x: {PIN}"
        )


@contextmanager
def tensorrt_api(trt):
    """An API this code expects but the installed TensorRT lacks is one line naming the version, not a trace."""
    try:
        yield
    except AttributeError as exc:
        raise UserError(
            f"the installed TensorRT {version_of(trt)} lacks an API export uses ({exc}); "
            f"{PIN} (export supports TensorRT 10.x and 11.x)"
        ) from None


def _logger(trt):
    """One logger for every builder and runtime: TensorRT warns when they are given different ones."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


@dataclass
class EngineOptions:
    source: str = "fp16"  # the ONNX variant the engine is built from: its precision is the engine's
    max_batch: int = 64
    opt_batch: int | None = None  # default: max_batch (serving runs full batches)
    workspace_gb: float = 4.0
    timing_cache: Path | None = None

    def profile(self) -> dict[str, int]:
        return {"min": 1, "opt": self.opt_batch or self.max_batch, "max": self.max_batch}


def host_facts() -> dict[str, Any]:
    """What ties an engine to this machine: TensorRT version, GPU name, compute capability."""
    trt = require_tensorrt()
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": torch.cuda.get_device_name(),
        "compute_capability": list(torch.cuda.get_device_capability()),
    }


# ── build ────────────────────────────────────────────────────────────────────────────────────────────


def network_flags(trt) -> int:
    """STRONGLY_TYPED: layer precisions come from the ONNX types (required on 11.x, where it is a no-op)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        major = int(version_of(trt).split(".")[0])
        if major >= 11:  # strongly typed is the only kind, and the flag may be gone
            return 0
        raise AttributeError("NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    return 1 << int(flag)


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(network_flags(trt))  # explicit batch is implied since 10.0
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT could not parse {onnx_path.name}: {errors}")
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


def _no_tf32(trt, config) -> None:
    """fp32 tensors stay true fp32 (TF32 would fail the fp32 gate); a restriction, not a precision hint."""
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None:
        config.clear_flag(tf32)


def build_engine(onnx_path: Path, dest: Path, crop: int, opts: EngineOptions) -> dict[str, Any]:
    """Build a serialized engine into `dest`; returns build figures. Timing cache read and saved back."""
    trt = require_tensorrt()
    with tensorrt_api(trt):
        return _build(trt, onnx_path, dest, crop, opts)


def _build(trt, onnx_path: Path, dest: Path, crop: int, opts: EngineOptions) -> dict[str, Any]:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    _add_profile(builder, config, crop, opts.profile())
    cache_bytes_in = _load_timing_cache(config, opts.timing_cache)
    _no_tf32(trt, config)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(
            "TensorRT failed to build the engine (see its messages above); try --engine-from fp32 "
            "or a larger --workspace-gb"
        )
    with open(dest, "wb") as fh:
        fh.write(serialized)
    if opts.timing_cache is not None:
        write_bytes_atomic(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    del parser
    return {
        "build_s": round(time.perf_counter() - start, 3),
        "timing_cache": str(opts.timing_cache),
        "timing_cache_reused_bytes": cache_bytes_in,
        "strongly_typed": True,
        "tensorrt_version": version_of(trt),
        "engine_from": opts.source,
    }


# ── sidecar ──────────────────────────────────────────────────────────────────────────────────────────


def sidecar(
    record_dict: dict[str, Any], opts: EngineOptions, onnx_file: str, onnx_sha256: str, bundle_dir: Path
) -> dict[str, Any]:
    """model.engine.json: the bundle record plus what ties the engine to its GPU, TensorRT and ONNX variant."""
    engine = {
        **host_facts(),
        "precision": opts.source,
        "engine_from": onnx_file,
        "strongly_typed": True,
        "profile": opts.profile(),
        "onnx_sha256": onnx_sha256,
        "input": ONNX_INPUT,
        "output": ONNX_OUTPUT,
        "workspace_gb": opts.workspace_gb,
        **bundle_ref(bundle_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {"record": record_dict, "engine": engine}


def sidecar_json(side: dict[str, Any]) -> str:
    return json.dumps(side, indent=2) + "\n"


# ── run ──────────────────────────────────────────────────────────────────────────────────────────────


def EngineRunner(  # noqa: N802 - the name export's stages call; a factory over the one shared runner
    blob: bytes, device: torch.device | str = "cuda", streams: CudaStreams = CUDA_STREAMS
) -> TrtRunner:
    """logits = runner(uint8 batch): core.trt_runner's runner (the same as serve's), with the stream wait
    before a CUDA input is read and record_stream on its outputs."""
    trt = require_tensorrt()
    with tensorrt_api(trt):
        return TrtRunner(trt, blob, device, _logger(trt), "the engine", streams)
