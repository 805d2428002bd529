"""bench.py runs on the CPU and reports every stage next to the naive baseline."""

from __future__ import annotations

import json
import re

IN_PROCESS = ["--workers", "0", "--batch-size", "4", "--device", "cpu"]  # decode here: no worker start-up


def test_bench_reports_each_stage_and_the_baseline(capsys, tmp_path):
    from serve.bench import main

    assert (
        main(
            [
                "--n",
                "6",
                "--side",
                "60",
                "--arch",
                "cifar_cnn",
                "--size",
                "32",
                *IN_PROCESS,
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("6 images in ")
    for stage in ("discovery", "decode, CPU path", "model only", "end to end", "naive baseline"):
        assert re.search(rf"^{re.escape(stage)}.*\s[\d,]+$", out, re.MULTILINE), (stage, out)
    assert re.search(r"end to end vs naive: \d+\.\d\dx", out)
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["images"] == 6 and figures["end_to_end_vs_naive"] > 0
    assert set(figures["images_per_s"]) == {"discovery", "decode_cpu", "model", "end_to_end", "naive"}


def test_bench_forks_its_decode_workers_before_opening_the_backend(monkeypatch, tmp_path):
    import serve.bench as bench
    import serve.decode as decode

    order = []
    workers, opener = decode.DecodeWorkers, bench.open_backend

    def spawn(*a, **kw):
        order.append("fork")
        return workers(*a, **kw)

    def open_model(*a, **kw):
        order.append("backend")
        return opener(*a, **kw)

    monkeypatch.setattr(decode, "DecodeWorkers", spawn)
    monkeypatch.setattr(bench, "open_backend", open_model)
    assert (
        bench.main(
            [
                "--n",
                "4",
                "--side",
                "40",
                "--arch",
                "cifar_cnn",
                "--size",
                "32",
                "--workers",
                "1",
                "--batch-size",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert order == ["fork", "backend"]  # CUDA, if any, starts after the fork


def test_bench_times_onnx_variants_on_the_same_images_with_their_agreement(bundle, capsys, tmp_path):
    import shutil

    from serve.bench import main
    from tests.serve.helpers import export_onnx

    fp32 = export_onnx(bundle, tmp_path / "model.onnx")
    int8 = shutil.copy(fp32, tmp_path / "model.int8.onnx")  # named like one: the precision column reads it
    assert (
        main(
            [
                "--model",
                str(bundle),
                "--variants",
                str(fp32),
                str(int8),
                "--n",
                "6",
                "--side",
                "48",
                *IN_PROCESS,
                "--json",
                str(tmp_path / "b.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"^model\.onnx \(fp32\)\s+[\d,]+\s+[\d,]+\s+\d\.\d{4}$", out, re.MULTILINE), out
    assert re.search(r"^model\.int8\.onnx \(int8\)\s", out, re.MULTILINE), out
    variants = json.loads((tmp_path / "b.json").read_text())["variants"]
    assert [v["precision"] for v in variants] == ["fp32", "int8"]
    assert all(v["top1_agreement"] > 0.8 for v in variants)  # the same weights as the torch model


def test_synthetic_images_have_as_many_distinct_sizes_as_images(tmp_path):
    """A batch of mixed-size photos must cost what a real folder costs: one size per image."""
    from PIL import Image

    from serve.bench import synthetic_jpegs

    root = synthetic_jpegs(tmp_path / "j", 70, 80)
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 70 and len({Image.open(f).size for f in files}) == 70
