"""Export-test helpers: tiny bundles for module-scoped fixtures, main() run in-process, ONNX corruption."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from core.bundle import RECORD_FILE, BundleRecord, save_bundle
from core.models import HeadSpec, build_model
from core.preprocess import EvalSpec
from export.main import main


def save_tiny_bundle(directory: Path, arch: str = "resnet18", crop: int = 32, seed: int = 0,
                     lineage: dict | None = None) -> Path:
    """What conftest's make_bundle makes, for module-scoped fixtures (make_bundle is function-scoped)."""
    torch.manual_seed(seed)
    model = build_model(arch, 4, HeadSpec(), pretrained="none").eval()
    record = BundleRecord(arch=arch, classes=["1", "2", "3", "4"],
                          display_names=["circle", "square", "triangle", "cross"],
                          preprocess=EvalSpec(resize=round(crop * 8 / 7), crop=crop),
                          metrics={"valid_acc": 0.0}, lineage=dict(lineage or {}))
    return save_bundle(directory, model, record)


def run_export(*argv) -> int:
    """main() as the CLI runs it: the return code, or SystemExit's code for a user error."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def edit_record(bundle: Path, **changes) -> None:
    path = bundle / RECORD_FILE
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def corrupt_head(src: Path, dest: Path) -> str:
    """Copy an ONNX file with one weight tensor changed: +10 on row 0 of the classifier's output layer."""
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name.endswith("output.weight"))
    w = numpy_helper.to_array(init).copy()
    w[0] += 10.0
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(dest))
    return init.name
