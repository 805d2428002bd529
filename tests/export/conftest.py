"""Export-test fixtures: one dynamo export of a tiny resnet18 shared by all export tests."""
from __future__ import annotations

import json

import pytest
from tests.export.export_helpers import run_export, save_tiny_bundle


@pytest.fixture(scope="session")
def resnet_export(tmp_path_factory, demo_root) -> dict:
    """resnet18 at 32 px through the default (dynamo) exporter, default --out, batches up to 32, with bench."""
    root = tmp_path_factory.mktemp("resnet")
    bundle = save_tiny_bundle(root / "run" / "best")
    rc = run_export(bundle, "--images", demo_root / "valid", "--max-batch", 32)
    out = root / "run" / "export"
    report = json.loads((out / "export_report.json").read_text())
    return {"rc": rc, "bundle": bundle, "out": out, "onnx": out / "model.onnx", "report": report}
