"""Export-test fixtures: one dynamo export of a tiny resnet18 shared by all export tests, a trained bundle."""

from __future__ import annotations

import pytest

from export.report import ExportReport
from tests.export.export_helpers import run_export, save_tiny_bundle, train_tiny_bundle


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory, demo_root) -> dict:
    """resnet18 at 32 px, default (dynamo) exporter, default --out, batches up to 32, with the speed check."""
    root = tmp_path_factory.mktemp("resnet")
    bundle = save_tiny_bundle(root / "run" / "best")
    rc = run_export(bundle, "--images", demo_root / "valid", "--max-batch", 32)
    out = root / "run" / "export"
    report = ExportReport.read(out / "export_report.json")
    return {"rc": rc, "bundle": bundle, "out": out, "onnx": out / "model.onnx", "report": report}


@pytest.fixture(scope="session")
def cnn_export(tmp_path_factory, demo_root) -> dict:
    """cifar_cnn at 32 px via the TorchScript exporter into --out: a quick file for --verify-only tests."""
    root = tmp_path_factory.mktemp("cnn")
    bundle = save_tiny_bundle(root / "run" / "best", arch="cifar_cnn")
    out = root / "dist"
    rc = run_export(
        bundle, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench", "--out", out
    )
    return {"rc": rc, "bundle": bundle, "out": out, "onnx": out / "model.onnx"}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_root):
    """cifar_cnn at 32 px trained on the demo shapes (≈90% on valid); lineage names train/ and valid/.

    Calibrated with T = 2 (as training would record it), so every variant is made and gated with T folded in.
    """
    from core.bundle import read_record, write_record
    from core.calibration import CalibrationRecord

    bundle = train_tiny_bundle(
        tmp_path_factory.mktemp("trained") / "run" / "best", demo_root, arch="cifar_cnn"
    )
    record = read_record(bundle)
    record.calibration = CalibrationRecord(
        temperature=2.0, threshold=0.5, target_precision=0.95, target_reached=True
    )
    write_record(bundle, record)
    return bundle
