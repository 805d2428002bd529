"""Bundle model → model.onnx: uint8 images in, logits out, record and export facts in metadata_props."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.bundle import WEIGHTS_FILE, BundleRecord
from core.errors import UserError, disk_full, full_error
from core.model_record import (
    ONNX_EXPORT_KEY,
    ONNX_INPUT,
    ONNX_OUTPUT,
    ONNX_PROBS,
    ONNX_RECORD_KEY,
    bundle_ref,
    sha256_file,
)
from core.preprocess import WithPreprocessing

# Opset 18 is the newest the TorchScript exporter and TensorRT 10's parser both handle well, and what the
# dynamo exporter emits natively (no version conversion pass).
OPSET = 18
DEFAULT_EXPORTER = "dynamo"
# torch.export needs an upper bound for a symbolic dim; the ONNX axis itself stays unbounded ("batch").
MAX_BATCH_DIM = 1 << 16


class ExportGraph(nn.Module):
    """What goes into the ONNX file: normalization + classifier, logits / T, and optionally softmax probabilities.

    The record's calibration temperature T is folded in, so the `logits` output (same name as before) and its
    softmax are calibrated in every variant; a bundle without calibration has T = 1 (no division).
    With dtype=float16 (the fp16 variant) only the classifier runs in half precision: the uint8 → float32
    normalization before it and the float32 logits (and softmax) after it keep the file's contract.
    """

    def __init__(
        self, model: nn.Module, record: BundleRecord, probs: bool = False, dtype: torch.dtype = torch.float32
    ):
        super().__init__()
        self.net = WithPreprocessing(model, record.preprocess)
        self.probs = probs
        self.dtype = dtype
        self.temperature = record.temperature

    def forward(self, images: torch.Tensor):  # the parameter name is the dynamo exporter's input name
        if self.dtype == torch.float32:
            logits = self.net(images)
        else:
            logits = self.net.model(self.net.normalize(images).to(self.dtype)).float()
        if self.temperature != 1.0:  # in float32 after the classifier, whatever the variant's precision
            logits = logits / self.temperature
        return (logits, torch.softmax(logits, dim=1)) if self.probs else logits


def output_names(probs: bool) -> list[str]:
    return [ONNX_OUTPUT, ONNX_PROBS] if probs else [ONNX_OUTPUT]


def _example(record: BundleRecord) -> torch.Tensor:
    # Batch 2, not 1: torch.export specializes a size-1 dim to a constant, which would pin the batch axis.
    crop = record.preprocess.crop
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, crop, crop), dtype=torch.uint8, generator=g)


def _export_dynamo(
    graph: nn.Module, example: torch.Tensor, dest: Path, opset: int, outputs: list[str]
) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH_DIM)
    torch.onnx.export(
        graph,
        (example,),
        str(dest),
        dynamo=True,
        input_names=[ONNX_INPUT],
        output_names=outputs,
        opset_version=opset,
        dynamic_shapes={"images": {0: batch}},
        external_data=False,
        optimize=True,
        verbose=False,
    )


def _export_torchscript(
    graph: nn.Module, example: torch.Tensor, dest: Path, opset: int, outputs: list[str]
) -> None:
    axes = {name: {0: "batch"} for name in [ONNX_INPUT, *outputs]}
    torch.onnx.export(
        graph,
        (example,),
        str(dest),
        dynamo=False,
        input_names=[ONNX_INPUT],
        output_names=outputs,
        opset_version=opset,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, int, list[str]], None]] = {
    "dynamo": _export_dynamo,
    "torchscript": _export_torchscript,
}
# Precision of the graph each variant is exported as (int8 is quantized from the fp32 graph afterwards).
GRAPH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def opset_range(exporter: str) -> tuple[int, int]:
    """Opsets the exporter can write: dynamo emits 18+ natively (older ones need a converter that fails on
    real models); TorchScript's own limits. Asked outside, the libraries print a long traceback first."""
    import onnx

    try:
        from torch.onnx import _constants as c
    except ImportError:  # private module: fall back to the limits of torch 2.4–2.14
        c = None
    newest = onnx.defs.onnx_opset_version()
    ranges = {
        "dynamo": (OPSET, min(newest, getattr(c, "ONNX_MAX_OPSET", 23))),
        "torchscript": (
            getattr(c, "ONNX_MIN_OPSET", 7),
            getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20),
        ),
    }
    return ranges[exporter]


def check_exporter(exporter: str, opset: int) -> None:
    """Refuse, before any work, an exporter that cannot run here or an opset it cannot produce."""
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401 - the dynamo exporter is built on it
        except ImportError:
            raise UserError(
                "the dynamo ONNX exporter needs onnxscript, which is not installed: "
                "pip install onnxscript, or use --exporter torchscript"
            ) from None
    low, high = opset_range(exporter)
    if not low <= opset <= high:
        raise UserError(
            f"--opset {opset} is outside what the {exporter} exporter can produce here "
            f"({low}–{high}); use --opset {OPSET} (the default)"
        )


def _exporter_version(name: str) -> str:
    if name == "dynamo":
        import onnxscript

        return f"onnxscript {onnxscript.__version__}"
    return f"torch.onnx torchscript {torch.__version__}"


def export_facts(
    exporter: str,
    opset: int,
    bundle_dir: Path,
    probs: bool,
    precision: str = "fp32",
    record_temperature: float = 1.0,
) -> dict[str, Any]:
    import onnx
    import torchvision

    return {
        "precision": precision,
        "opset": opset,
        "exporter": exporter,
        "exporter_version": _exporter_version(exporter),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "weights_sha256": sha256_file(bundle_dir / WEIGHTS_FILE),
        **bundle_ref(bundle_dir),
        "input": ONNX_INPUT,
        "outputs": output_names(probs),
        "logits_divided_by_temperature": record_temperature,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _run_exporter(
    exporter: str, graph: nn.Module, example: torch.Tensor, dest: Path, opset: int, outputs: list[str]
) -> None:
    """Run exactly the chosen exporter; its failure is reported with the other one suggested, never hidden."""
    other = next(name for name in EXPORTERS if name != exporter)
    try:
        with torch.inference_mode(False), torch.no_grad():
            EXPORTERS[exporter](graph, example, dest, opset, outputs)
    except Exception as exc:  # noqa: BLE001 - exporter internals raise anything; the user needs the gist
        full = disk_full(exc)
        if full is not None:  # the disk, not the exporter: say which file could not be written
            raise full_error(full, str(dest)) from exc
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(
            f"the {exporter} ONNX exporter failed ({type(exc).__name__}: {first}); try --exporter {other}"
        ) from None


def embed_metadata(dest: Path, record: BundleRecord, facts: dict[str, Any]) -> None:
    """Write the record and facts into metadata_props, check the graph's contract, run onnx.checker."""
    import onnx

    model = onnx.load(str(dest))
    _check_opset(model, facts["opset"], facts["exporter"])
    del model.metadata_props[:]
    for key, value in ((ONNX_RECORD_KEY, record.to_dict()), (ONNX_EXPORT_KEY, facts)):
        model.metadata_props.add(key=key, value=json.dumps(value))
    model.doc_string = (
        f"imgclf {record.arch}, {record.num_classes} classes, {facts['precision']}; "
        "uint8 RGB NCHW in, float32 logits out"
        + (
            f" (divided by the calibration temperature {record.temperature:.4g})"
            if record.calibration
            else ""
        )
    )
    _check_contract(model, record, facts["outputs"])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(dest))


def _check_opset(model, asked: int, exporter: str) -> None:
    """The dynamo exporter falls back to its own opset when it cannot convert; the file must be what we record."""
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != asked:
        other = next(name for name in EXPORTERS if name != exporter)
        raise UserError(
            f"the {exporter} exporter could not produce opset {asked} (the graph came out as opset "
            f"{got}); try --exporter {other} or another --opset (default {OPSET})"
        )


def _check_contract(model, record: BundleRecord, outputs: list[str]) -> None:
    """The serve contract: one uint8 input `images` [batch, 3, crop, crop] and the named float outputs."""
    import onnx

    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    crop = record.preprocess.crop
    shape = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    problems = []
    uint8 = bool(inputs) and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    if [i.name for i in inputs] != [ONNX_INPUT] or not uint8:
        problems.append(f"inputs {[i.name for i in inputs]} are not one uint8 '{ONNX_INPUT}'")
    elif not isinstance(shape[0], str) or shape[1:] != [3, crop, crop]:
        problems.append(f"input shape {shape} is not [batch, 3, {crop}, {crop}] with a dynamic batch")
    if [o.name for o in model.graph.output] != outputs:
        problems.append(f"outputs {[o.name for o in model.graph.output]} are not {outputs}")
    elif any(o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT for o in model.graph.output):
        problems.append("outputs are not float32")
    if problems:
        raise RuntimeError("exported graph breaks the model.onnx contract: " + "; ".join(problems))


def export_onnx(
    model: nn.Module,
    record: BundleRecord,
    bundle_dir: Path,
    dest: Path,
    exporter: str = DEFAULT_EXPORTER,
    opset: int = OPSET,
    probs: bool = False,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Export to `dest` (normally a temp path) as an fp32 or fp16 graph; return the facts embedded in it."""
    check_exporter(exporter, opset)
    dtype = GRAPH_DTYPES[precision]
    net = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    graph = ExportGraph(net, record, probs, dtype).eval()
    outputs = output_names(probs)
    facts = export_facts(exporter, opset, bundle_dir, probs, precision, record.temperature)
    _run_exporter(exporter, graph, _example(record), dest, opset, outputs)
    embed_metadata(dest, record, facts)
    return facts
