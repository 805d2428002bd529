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


def save_tiny_bundle(
    directory: Path, arch: str = "resnet18", crop: int = 32, seed: int = 0, lineage: dict | None = None
) -> Path:
    """What conftest's make_bundle makes, for module-scoped fixtures (make_bundle is function-scoped)."""
    torch.manual_seed(seed)
    model = build_model(arch, 4, HeadSpec(), pretrained="none").eval()
    record = BundleRecord(
        arch=arch,
        classes=["1", "2", "3", "4"],
        display_names=["circle", "square", "triangle", "cross"],
        preprocess=EvalSpec(resize=round(crop * 8 / 7), crop=crop),
        metrics={"valid_acc": 0.0},
        lineage=dict(lineage or {}),
    )
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


def train_tiny_bundle(
    directory: Path, data_root: Path, arch: str = "resnet18", crop: int = 32, epochs: int = 12, seed: int = 0
) -> Path:
    """A bundle that has learned the demo shapes: a plain loop (flip augmentation) on data_root/train.

    Training itself is tested in tests/train; here we need weights with real, confident decisions, so
    that precision variants are checked on a model whose top-1 means something. Lineage points at the
    data, so export finds its calibration (train) and gate (valid) folders as it does for a real run.
    """
    from core.images import decode_image
    from core.preprocess import Normalize, eval_transform

    spec = EvalSpec(resize=round(crop * 8 / 7), crop=crop)
    classes = sorted(p.name for p in (data_root / "train").iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((data_root / "train" / c).iterdir())]
    transform = eval_transform(spec)
    x = torch.stack([transform(decode_image(f)) for f, _ in files])
    y = torch.tensor([i for _, i in files])
    torch.manual_seed(seed)
    model = build_model(arch, len(classes), HeadSpec(), pretrained="none")
    norm = Normalize(spec.mean, spec.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(16):
            batch = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            loss = torch.nn.functional.cross_entropy(model(norm(batch)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    record = BundleRecord(
        arch=arch,
        classes=classes,
        preprocess=spec,
        metrics={},
        lineage={"dataset": {"train_dir": str(data_root / "train"), "valid_dir": str(data_root / "valid")}},
    )
    return save_bundle(directory, model.eval(), record)
