"""The one way this project opens an onnxruntime session (export's gate, serve, the Python API): which
execution providers in what order, their options, the thread count, and the check that the providers
asked for really started (onnxruntime silently drops one whose libraries fail to load).

onnxruntime is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = (PROVIDERS["tensorrt"], PROVIDERS["cuda"])
GPU_WHEEL_HINT = "for GPU providers install the gpu extra: pip install '.[gpu]'"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def provider_names(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Short names (tensorrt, cuda, cpu) or full provider names → full names, in order; one this
    onnxruntime lacks is a UserError naming what it has."""
    names = [PROVIDERS.get(r.strip().lower(), r.strip()) for r in requested if r.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(
            f"onnxruntime here lacks {', '.join(missing)} (available: {', '.join(available)}); {GPU_WHEEL_HINT}"
        )
    return names


def provider_options(
    names: Sequence[str], device_id: int | None = None, exact_fp32: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    """Each provider with its options.

    device_id: onnxruntime's default is GPU 0 for every process, so under accelerate launch all ranks
    would share one GPU. cudnn_conv_algo_search HEURISTIC: the default (EXHAUSTIVE) searches again for
    every new batch shape, such as each partial last batch. exact_fp32: TF32 off, so CUDA is compared
    with PyTorch in true fp32 (the export gate)."""
    gpu = {} if device_id is None else {"device_id": device_id}
    cuda = {**gpu, "cudnn_conv_algo_search": "HEURISTIC", **({"use_tf32": "0"} if exact_fp32 else {})}
    table = {PROVIDERS["cuda"]: cuda, PROVIDERS["tensorrt"]: gpu}
    return [(n, dict(table.get(n, {}))) for n in names]


def open_session(
    path: str | Path,
    providers: Sequence[tuple[str, dict[str, Any]]],
    threads: int | None = None,
    must_start: Sequence[str] = (),
):
    """An InferenceSession on `providers` (in priority order) with `threads` intra-op threads (None:
    onnxruntime's default). Every provider in `must_start` must be running, or a UserError says which
    did not; pass none where a CPU fallback is allowed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's own fallback warning is replaced by the check below
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise UserError(f"onnxruntime cannot load {path}: {exc}") from None
    used = session.get_providers()
    lost = [p for p in must_start if p not in used]
    if lost:
        raise UserError(
            f"onnxruntime could not start {', '.join(lost)} (running: {', '.join(used)}); check the "
            "CUDA/cuDNN/TensorRT libraries, or pass --allow-cpu to accept this"
        )
    return session
