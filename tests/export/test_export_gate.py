"""The export gate: parity with PyTorch on real images decides whether model.onnx is kept."""

from __future__ import annotations

import shutil

import onnxruntime

from core.images import is_image_file
from core.preprocess import EvalSpec
from export import onnx_export
from export.report import ExportReport
from export.samples import RANDOM_WARNING, find_images, load_samples
from tests.export.export_helpers import corrupt_head, edit_record, run_export


def _report(path):
    return ExportReport.read(path)


def test_report_records_parity_on_real_images_and_the_providers_used(resnet_export, demo_root):
    report = resnet_export["report"]
    parity = report.parity["onnx"]
    assert report.status == "passed"
    assert report.inputs["source"] == "images" and report.inputs["count"] == 20
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_prob"] <= 1e-4 and parity["passed"]
    assert sorted(parity["batches"], key=int) == ["1", "7", "32"]
    assert parity["provider_requested"] == "cpu" and parity["providers"] == ["CPUExecutionProvider"]
    assert parity["worst"]["path"].startswith(str(demo_root / "valid"))


def test_report_has_file_sizes_times_and_a_speed_check(resnet_export):
    report = resnet_export["report"]
    assert report.files["model.onnx"]["bytes"] == resnet_export["onnx"].stat().st_size
    assert report.times_s["export_onnx"] > 0 and report.times_s["verify_onnx"] > 0
    for fmt in ("torch fp32", "onnx fp32"):
        speed = report.bench[fmt]
        assert speed["batch1_latency_ms"] > 0
        assert speed["best_images_per_s"] == max(speed["images_per_s"].values())
        assert sorted(speed["images_per_s"], key=int) == ["1", "8", "32"]


def test_verify_only_with_the_bundle_named_passes(cnn_export, demo_root, tmp_path):
    """The file records no machine path (M20): away from its run folder, the bundle is named with --bundle."""
    onnx_path = tmp_path / "model.onnx"
    shutil.copy(cnn_export["onnx"], onnx_path)
    args = ("--verify-only", "--bundle", cnn_export["bundle"], "--images", demo_root / "valid", "--no-bench")
    assert run_export(onnx_path, *args) == 0
    report = _report(tmp_path / "verify_report.json")
    assert report.status == "passed"
    assert report.bundle == str(cnn_export["bundle"].resolve())


def test_gate_fails_on_an_onnx_with_one_weight_changed_and_says_where(cnn_export, demo_root, tmp_path):
    bad = tmp_path / "model.onnx"
    corrupt_head(cnn_export["onnx"], bad)
    args = ("--verify-only", "--bundle", cnn_export["bundle"], "--images", demo_root / "valid", "--no-bench")
    assert run_export(bad, *args) == 1
    report = _report(tmp_path / "verify_report.json")
    parity = report.parity["onnx"]
    assert report.status == "failed" and not parity["passed"]
    assert parity["max_abs_prob"] > 1e-4 and any("Δprob" in f for f in parity["failures"])
    worst = parity["worst"]
    assert is_image_file(worst["path"]) and worst["path"].startswith(str(demo_root / "valid"))
    assert worst["exported_logits"][0] > worst["torch_logits"][0] + 1.0  # row 0 of the head got +10


def test_failed_gate_leaves_no_model_onnx(make_bundle, demo_root, tmp_path, monkeypatch):
    real_export = onnx_export.export_onnx

    def export_then_corrupt(*args, **kwargs):
        facts = real_export(*args, **kwargs)
        dest = args[3]
        corrupt_head(dest, dest)
        return facts

    monkeypatch.setattr(onnx_export, "export_onnx", export_then_corrupt)
    bundle = make_bundle(arch="cifar_cnn")
    out = tmp_path / "out"
    assert (
        run_export(
            bundle, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench", "--out", out
        )
        == 1
    )
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json"]
    report = _report(out / "export_report.json")
    assert report.status == "failed" and report.failed_format == "onnx"


def test_a_failing_exporter_is_reported_not_replaced_by_the_other(make_bundle, tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setitem(onnx_export.EXPORTERS, "torchscript", broken)
    out = tmp_path / "out"
    assert run_export(make_bundle(arch="cifar_cnn"), "--exporter", "torchscript", "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "error: the torchscript ONNX exporter failed (RuntimeError: unsupported operator "
        "aten::frobnicate); try --exporter dynamo"
    )
    assert not out.exists()


def test_without_images_the_gate_runs_on_random_tensors_and_says_so(make_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    bundle = make_bundle(arch="cifar_cnn")
    assert run_export(bundle, "--exporter", "torchscript", "--no-bench", "--out", out) == 0
    inputs = _report(out / "export_report.json").inputs
    assert inputs["source"] == "random" and inputs["warning"] == RANDOM_WARNING
    assert "WARNING: no real images" in capsys.readouterr().err


def test_the_bundles_validation_folder_is_used_when_reachable(make_bundle, demo_root, tmp_path):
    bundle = make_bundle(arch="cifar_cnn")
    edit_record(bundle, lineage={"dataset": {"valid_dir": str(demo_root / "valid")}})
    out = tmp_path / "out"
    assert run_export(bundle, "--exporter", "torchscript", "--no-bench", "--out", out) == 0
    inputs = _report(out / "export_report.json").inputs
    assert (inputs["source"], inputs["root"], inputs["count"]) == ("valid_dir", str(demo_root / "valid"), 20)


def test_asking_for_cuda_without_it_is_an_error_unless_allow_cpu(
    make_bundle, demo_root, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    bundle, out = make_bundle(arch="cifar_cnn"), tmp_path / "out"
    args = [
        bundle,
        "--images",
        demo_root / "valid",
        "--exporter",
        "torchscript",
        "--no-bench",
        "--out",
        out,
        "--provider",
        "cuda",
    ]
    assert run_export(*args) == 2
    assert "--allow-cpu" in capsys.readouterr().err and not (out / "model.onnx").exists()
    assert run_export(*args, "--allow-cpu") == 0
    parity = _report(out / "export_report.json").parity["onnx"]
    assert parity["provider_requested"] == "cuda" and parity["providers"] == ["CPUExecutionProvider"]


def test_image_sample_is_capped_with_every_class_folder_represented(demo_root):
    picked = find_images(demo_root / "valid", cap=4)
    assert len(picked) == 4 and {p.parent.name for p in picked} == {"1", "2", "3", "4"}


def test_undecodable_images_are_skipped_and_listed(demo_root, tmp_path):
    good = next((demo_root / "valid" / "2").iterdir())
    (tmp_path / "2").mkdir()
    shutil.copy(good, tmp_path / "2" / good.name)
    (tmp_path / "2" / "broken.jpg").write_bytes(b"not a jpeg")
    samples = load_samples(tmp_path, EvalSpec(resize=37, crop=32), ["1", "2"], cap=10, source="images")
    assert samples.images.shape == (1, 3, 32, 32) and samples.labels == [1]
    assert [s["path"] for s in samples.skipped] == [str(tmp_path / "2" / "broken.jpg")]
