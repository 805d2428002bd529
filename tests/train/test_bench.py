"""train/bench.py: the CPU-size smoke run prints every row and the ratios; the batch-size search halves on OOM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.bench import main
from train.bench_step import largest_batch_that_fits

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_prints_all_four_paths_and_their_ratios(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "train" / "bench.py"),
        "--models",
        "resnet18",
        "--size",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch-size",
        "4",
        "--tutorial-batch-size",
        "4",
        "--workers",
        "0",
        "--tutorial-workers",
        "0",
        "--threads",
        "2",
        "--synthetic",
        "8",
        "--image-size",
        "48",
        "--cache",
        str(tmp_path / "data"),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for label in ("model only", "CPU decode", "GPU decode", "tutorial loop"):
        row = next(line for line in lines if label in line)
        assert float(row.split("img/s")[0].split()[-1]) > 0
    ratio_line = next(line for line in lines if "ratios:" in line)
    for name in ("gpu/model", "cpu/model", "gpu/tutorial", "cpu/tutorial"):
        assert name in ratio_line
    saved = json.loads(out.read_text())["models"]["resnet18"]
    assert [r["path"] for r in saved["rows"]] == ["model", "cpu", "gpu", "tutorial"]
    assert saved["ratios"]["gpu/model"] == pytest.approx(
        saved["rows"][2]["images_per_s"] / saved["rows"][0]["images_per_s"]
    )
    assert len(list((tmp_path / "data").rglob("*.jpg"))) == 8


def test_batch_search_halves_until_a_step_fits():
    tried = []

    def try_batch(n: int) -> None:
        tried.append(n)
        if n > 48:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert largest_batch_that_fits(try_batch, 512) == 32
    assert tried == [512, 256, 128, 64, 32]


def test_batch_search_does_not_hide_errors_other_than_oom():
    def broken(n: int) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        largest_batch_that_fits(broken, 64)


def test_batch_search_gives_up_with_a_user_error_when_nothing_fits(capsys):
    def never(n: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    from core.errors import UserError

    with pytest.raises(UserError, match="does not fit"):
        largest_batch_that_fits(never, 8)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--paths", "model,fastest"], "unknown --paths fastest"),
        (["--steps", "0"], "must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_user_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_data_folder_without_class_images_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(tmp_path), "--device", "cpu"])
    assert exc.value.code == 2 and "no images under" in capsys.readouterr().err


def test_smoke_mode_takes_the_gpu_check_flags_and_reports_where_the_gpu_feed_decoded(tmp_path):
    """tools/gpu_check.py runs `--arch A --size S --batch B --json PATH`; --smoke shrinks everything else."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "train" / "bench.py"),
        "--smoke",
        "--arch",
        "resnet18",
        "--batch",
        "4",
        "--paths",
        "model,gpu",
        "--cache",
        str(tmp_path / "data"),
        "--json",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(out.read_text())
    result = saved["models"]["resnet18"]
    assert [r["path"] for r in result["rows"]] == ["model", "gpu"] and saved["images"] == 8
    assert result["gpu_feed_decode"]["device"] > 0 and result["gpu_feed_decode"]["cpu"] == {}
    assert "GPU feed image decode:" in proc.stdout and "gpu/model" in proc.stdout


def test_the_gpu_feed_row_builds_one_prefetch_for_every_epoch_of_the_synthetic_set(tmp_path, monkeypatch):
    """Steady state only: a prefetch per epoch drained and refilled the pipeline at every epoch end."""
    from core.preprocess import AugmentSpec, EvalSpec
    from train import bench_feeds as feeds
    from train.bench_step import Setup

    root = feeds.synthetic_folder(tmp_path / "data", 4, 40)
    samples = [(str(p), int(p.parent.name)) for p in sorted(root.rglob("*.jpg"))]
    calls = []
    real = feeds.prefetch
    monkeypatch.setattr(feeds, "prefetch", lambda *a, **k: calls.append(1) or real(*a, **k))
    setup = Setup(torch.device("cpu"), None, False)
    batches = feeds.gpu_batches(samples, AugmentSpec(), EvalSpec(40, 32), 2, 0, 1, setup, [])
    got = [next(batches) for _ in range(5)]  # 2.5 epochs of 2 batches
    assert len(calls) == 1 and all(images.shape == (2, 3, 32, 32) for images, _ in got)
    batches.close()
