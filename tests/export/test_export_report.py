"""export_report.json is one typed record: what is written is what ExportReport reads back, key for key."""

from __future__ import annotations

import json

from export.report import ExportReport


def test_the_report_on_disk_round_trips_through_the_type(resnet_export):
    path = resnet_export["out"] / "export_report.json"
    on_disk = json.loads(path.read_text())
    assert ExportReport.read(path).to_dict() == on_disk
    assert {"status", "variants", "failed_variants", "files", "parity", "bench", "inputs"} <= set(on_disk)
    assert "onnx" not in on_disk and "failed_format" not in on_disk  # verify-only and failure fields


def test_a_report_from_a_newer_version_reads_with_its_unknown_keys_ignored(tmp_path):
    path = ExportReport(kind="verify", bundle="b", inputs={}, onnx="m.onnx").write(tmp_path / "r.json")
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "new_key": 1}))
    report = ExportReport.read(path)
    assert report.kind == "verify" and report.onnx == "m.onnx" and report.variants is None
