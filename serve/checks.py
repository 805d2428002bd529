"""A model file checked against its own record at load: the input size the record's crop implies and one
logits column per class. Unchecked, a mismatch is an onnxruntime traceback, an IndexError in the writer,
or (fewer logits than classes) rows with wrong labels and exit 0.

Static shapes are read where the file declares them (ONNX input/output dims, TensorRT tensor shapes);
then one dummy batch settles what dynamic dims hide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.bundle import BundleRecord, read_record
from core.errors import UserError
from core.model_record import ONNX_INPUT, ONNX_OUTPUT, read_engine_sidecar, read_onnx_record

FIXES = {
    "torch": "its weights and record disagree: re-copy or re-train the bundle",
    "onnx": "re-export it from its bundle with `python export/main.py <bundle>`",
    "tensorrt": "rebuild it with `python export/main.py <bundle> --tensorrt`",
}
RECORDS: dict[str, Callable[[Path], BundleRecord]] = {
    "torch": read_record,
    "onnx": lambda p: read_onnx_record(p)[0],
    "tensorrt": lambda p: read_engine_sidecar(p)[0],
}


def check_model(backend: Any, model: str | Path, kind: str) -> Any:
    """Returns `backend` when the model agrees with its record; else one UserError naming the mismatch."""
    model = Path(model)
    record = getattr(backend, "record", None) or RECORDS[kind](model)  # the one the backend opened with
    crop, classes, fix = record.preprocess.crop, len(record.classes), FIXES[kind]
    input_dims, output_dims = declared_dims(backend)
    if input_dims is not None:
        check_input_dims(model, input_dims, crop, fix)
    check_engine_profile(model, getattr(backend, "engine", None), crop, fix)
    if output_dims:
        check_logits_width(model, _static(output_dims[-1]), classes, fix)
    n = probe_size(getattr(backend, "engine", None))
    logits = _one_batch(backend, model, crop, fix, n)
    if logits.dim() != 2:
        raise UserError(f"{model} outputs logits of shape {list(logits.shape)}, not [N, classes]; {fix}")
    if logits.shape[0] != n:  # the writer pairs row i with image i: a short answer mislabels or crashes
        raise UserError(
            f"{model} returns {logits.shape[0]} rows of logits for a batch of {n} images, not one per "
            f"image; {fix}"
        )
    check_logits_width(model, logits.shape[1], classes, fix)
    return backend


def declared_dims(backend: Any) -> tuple[Sequence | None, Sequence | None]:
    """(input dims, logits dims) as the file declares them; a str or a negative int is a dynamic dim."""
    session = getattr(backend, "session", None)  # onnxruntime
    if session is not None:
        ins = {i.name: i.shape for i in session.get_inputs()}
        outs = {o.name: o.shape for o in session.get_outputs()}
        return ins.get(ONNX_INPUT), outs.get(ONNX_OUTPUT)
    engine = getattr(backend, "engine", None)  # TensorRT
    if engine is not None and hasattr(engine, "get_tensor_shape"):
        return tuple(engine.get_tensor_shape(ONNX_INPUT)), tuple(engine.get_tensor_shape(ONNX_OUTPUT))
    return None, None  # torch: only the dummy batch can tell


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def check_input_dims(model: Path, dims: Sequence, crop: int, fix: str) -> None:
    if len(dims) != 4:
        raise UserError(f"{model} takes a {len(dims)}-d input, not [N, 3, H, W] images; {fix}")
    n, c, h, w = (_static(d) for d in dims)
    if n is not None:  # a fixed batch, even of 1, fails on serve's first full batch
        raise UserError(
            f"{model} takes exactly {n} image(s) per call (a fixed batch dim); serving needs a "
            f"dynamic batch: {fix}"
        )
    if c not in (None, 3):
        raise UserError(f"{model} takes {c}-channel images, not RGB; {fix}")
    if (h is not None and h != crop) or (w is not None and w != crop):
        raise UserError(
            f"{model} takes {h or '?'}×{w or '?'} images but its record says crop {crop} "
            f"(the input serve feeds it); {fix}"
        )


def check_engine_profile(model: Path, engine: Any, crop: int, fix: str) -> None:
    """An engine built with dynamic H/W runs only sizes inside its optimization profile."""
    if engine is None or not hasattr(engine, "get_tensor_profile_shape"):
        return
    low, _, high = (tuple(s) for s in engine.get_tensor_profile_shape(ONNX_INPUT, 0))
    if not all(lo <= crop <= hi for lo, hi in zip(low[2:], high[2:])):
        raise UserError(
            f"{model} was built for {low[2]}..{high[2]} × {low[3]}..{high[3]} images but its record "
            f"says crop {crop}; {fix}"
        )


def check_logits_width(model: Path, width: int | None, classes: int, fix: str) -> None:
    """`width` None (a dynamic dim) passes: the dummy batch decides."""
    if width is not None and width != classes:
        raise UserError(
            f"{model} outputs {width} logits per image but its record lists {classes} classes, so "
            f"its labels would be wrong; {fix}"
        )


PROBE_BATCH = 3  # more than one image, so a graph that folds the batch (1 row for N) is caught


def probe_size(engine: Any) -> int:
    """PROBE_BATCH, or less where a TensorRT profile's largest batch is smaller."""
    if engine is None or not hasattr(engine, "get_tensor_profile_shape"):
        return PROBE_BATCH
    high = tuple(engine.get_tensor_profile_shape(ONNX_INPUT, 0))[2]
    return max(1, min(PROBE_BATCH, int(high[0])))


def _one_batch(backend: Any, model: Path, crop: int, fix: str, n: int = 1) -> torch.Tensor:
    images = torch.zeros((n, 3, crop, crop), dtype=torch.uint8, device=getattr(backend, "device", "cpu"))
    try:
        return torch.as_tensor(backend(images))
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types; all mean the same here
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"{model} fails on one {n}×3×{crop}×{crop} batch, the input its record describes "
            f"({type(exc).__name__}: {first}); {fix}"
        ) from None
