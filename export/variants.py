"""Precision variants of model.onnx: which file each is, and the int8 one made by static Q/DQ quantization.

fp32 and fp16 are exported from torch (onnx_export); int8 is quantized from the gated fp32 graph with
onnxruntime's quantize_static: per-channel symmetric int8 weights, activations calibrated on real images.
The uint8 input and the normalization in front of the first layer stay float32 in every variant.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import UserError

if TYPE_CHECKING:  # this module is imported for --help, which must not load torch
    import torch

ONNX_INPUT = "images"  # core.model_record.ONNX_INPUT (that module loads torch)

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
# int8 activations: TensorRT's explicit quantization takes only symmetric int8 (zero point 0); onnxruntime's
# x86 CPU kernels are fastest with uint8 activations × int8 weights (VPMADDUBSW; measured in the README).
ACTIVATIONS = ("uint8", "int8")
FRONT_OPS = {"Cast", "Sub", "Mul", "Div", "Add", "Identity"}  # uint8 → float32 normalization ops


def parse_precisions(text: str) -> list[str]:
    """'fp32,int8' → ['fp32', 'int8'] in canonical order; an unknown name lists the valid ones."""
    asked = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in asked if p not in FILES]
    if unknown or not asked:
        raise UserError(
            f"--precision {text!r}: unknown {', '.join(unknown) or 'empty list'}; valid: a comma "
            f"list of {', '.join(FILES)} (e.g. --precision fp32,fp16,int8)"
        )
    return [p for p in FILES if p in asked]


def front_nodes(model) -> list[str]:
    """Names of the nodes between the uint8 input and the first layer: the cast and the normalization."""
    made, front = {ONNX_INPUT}, []
    for node in model.graph.node:
        if not any(i in made for i in node.input):
            continue
        if node.op_type not in FRONT_OPS:
            break
        front.append(node.name)
        made.update(node.output)
    return front


def fingerprint(images: torch.Tensor) -> str:
    """sha256 of the calibration tensor itself: the same decoded pixels give the same int8 file."""
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


def _reader(images: torch.Tensor, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(images.split(batch))

        def get_next(self) -> dict[str, Any] | None:
            b = next(self.batches, None)
            return None if b is None else {ONNX_INPUT: b.contiguous().numpy()}

    return Batches()


def quantize_int8(
    src: Path, dest: Path, calib: torch.Tensor, activations: str = "uint8", batch: int = 16
) -> dict[str, Any]:
    """fp32 ONNX → Q/DQ int8 ONNX at `dest`; returns the quantization facts for the metadata and report."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's graph optimizations first: weights reached through Identity nodes (the TorchScript
    # exporter shares them so) are not seen as constants, and the int8 file came out slower than fp32.
    pre = dest.with_name(dest.name + ".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # symbolic shapes: for transformers
    exclude = front_nodes(onnx.load(str(pre), load_external_data=False))
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[activations]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(pre),
            str(dest),
            _reader(calib, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=act,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": activations == "int8", "WeightSymmetric": True},
        )
    finally:
        logging.getLogger().setLevel(quiet)
        pre.unlink(missing_ok=True)
    return {
        "format": "QDQ",
        "weights": "int8 per-channel symmetric",
        "activations": f"{activations} {'symmetric' if activations == 'int8' else 'asymmetric'}",
        "calibration_method": "minmax",
        "excluded_nodes": exclude,
    }
