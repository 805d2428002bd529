"""The output file has one writer and --resume only continues the job that wrote it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.lock import OutputLock, lock_path
from serve.provenance import meta_path
from tests.launchers import cpu_processes
from tests.proctree import run_tree
from tests.serve.conftest import CLASSES, NAMES
from tests.serve.helpers import REPO, SERVE, image_tree, read_rows, run_serve, serve, subprocess_env

HOLD = (
    "import sys, time; from pathlib import Path; from core.lock import OutputLock\n"
    "lock = OutputLock(Path(sys.argv[1])); assert lock.acquire() is None; print('held', flush=True); time.sleep(60)"
)


def _holder(out):
    """Another process holding the lock on `out`, as a running serve would."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _refused(capsys, *argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(*argv)
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("classify")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ─── one writer ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_a_second_serve_on_a_locked_out_exits_2_naming_the_holder(bundle, photos, tmp_path, capsys, mode):
    out = tmp_path / "p.csv"
    holder = _holder(out)
    try:
        err = _refused(capsys, bundle, photos, "--out", out, "--workers", 0, *mode)
    finally:
        holder.kill()
        holder.wait()
    assert f"pid {holder.pid}" in err and "another serve" in err
    assert not out.exists()


def test_a_lock_left_by_a_killed_serve_does_not_block(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # the file stays; the kernel dropped the lock with its holder
    assert serve(bundle, photos, "--out", out, "--workers", 0, "--no-progress") == 0
    assert len(read_rows(out)) == 6 and not lock_path(out).exists()


def test_two_serves_at_once_one_writes_the_other_is_refused(bundle, tmp_path, capsys):
    folder = tmp_path / "in"
    image_tree(folder, {"a": 6})
    out = tmp_path / "p.csv"
    first = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "serve" / "main.py"),
            str(bundle),
            str(folder),
            "--out",
            str(out),
            "--workers",
            "0",
            "--batch-size",
            "1",
            "--throttle",
            "0.5",
            "--no-progress",
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.1)
    err = _refused(capsys, bundle, folder, "--out", out, "--workers", 0, "--resume")
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert f"pid {first.pid}" in err
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == 6


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    out = tmp_path / "p.csv"
    with OutputLock(out):
        refusal = OutputLock(out).acquire()
        assert refusal and f"pid {os.getpid()}" in refusal
    assert OutputLock(out).acquire() is None


# ─── the same job ─────────────────────────────────────────────────────────────────────────────


def test_the_job_is_recorded_beside_the_output_which_stays_plain_csv(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    serve(bundle, photos, "--out", out, "--workers", 0, "--topk", 3)
    meta = json.loads(meta_path(out).read_text())
    assert len(meta["model_sha256"]) == 64 and meta["topk"] == 3 and meta["format"] == "csv"
    assert meta["probs"] is False and meta["absolute"] is False and meta["serve_version"]
    assert out.read_text().startswith("path,status,")


def test_resume_with_another_model_is_refused_naming_it(make_bundle, photos, tmp_path, capsys):
    a = make_bundle("cifar_cnn", crop=32, classes=CLASSES, display_names=NAMES, name="a", seed=0)
    b = make_bundle("cifar_cnn", crop=32, classes=CLASSES, display_names=NAMES, name="b", seed=1)
    out = tmp_path / "p.csv"
    serve(a, photos / "1", "--out", out, "--workers", 0)
    before = out.read_bytes()
    err = _refused(capsys, b, photos / "1", photos / "2", "--out", out, "--workers", 0, "--resume")
    assert "another job" in err and str(b) in err and str(a) in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert serve(b, photos / "1", "--out", out, "--workers", 0, "--overwrite") == 0
    assert serve(b, photos, "--out", out, "--workers", 0, "--resume") == 0


@pytest.mark.parametrize(
    "flag, differs",
    [
        (["--absolute"], "--absolute False there, True now"),
        (["--topk", 2], "--topk 4 there, 2 now"),  # default 5, 4 classes
        (["--probs"], "--probs/--evaluate False there, True now"),
    ],
)
def test_resume_with_other_output_flags_is_refused_naming_the_flag(
    bundle, photos, tmp_path, capsys, flag, differs
):
    out = tmp_path / "p.csv"
    serve(bundle, photos / "1", "--out", out, "--workers", 0)
    err = _refused(capsys, bundle, photos, "--out", out, "--workers", 0, "--resume", *flag)
    assert differs in err


def test_m18_resume_without_the_record_that_ties_the_file_to_its_model_is_refused(
    bundle, photos, tmp_path, capsys
):
    out = tmp_path / "p.csv"
    serve(bundle, photos / "1", "--out", out, "--workers", 0)
    meta_path(out).unlink()
    before = out.read_bytes()
    err = _refused(capsys, bundle, photos, "--out", out, "--workers", 0, "--resume")
    assert "nothing ties its rows to a model" in err and "--overwrite" in err
    assert out.read_bytes() == before
    assert serve(bundle, photos / "1", "--out", out, "--workers", 0, "--overwrite") == 0
    assert meta_path(out).exists()


def test_a_run_killed_before_its_first_row_leaves_nothing_that_blocks_a_fresh_one(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    r = run_serve(bundle, photos, "--out", out, "--workers", 0, "--limit", 1)
    assert r.returncode == 0, r.stderr
    out.unlink()  # only the record and no rows: a fresh run is not a resume
    assert serve(bundle, photos, "--out", out, "--workers", 0, "--topk", 2) == 0


@pytest.mark.slow
def test_under_accelerate_launch_every_process_refuses_a_locked_out(bundle, photos, tmp_path):
    from tests.serve.test_multiprocess import DEADLINE_S

    out = tmp_path / "p.csv"
    holder = _holder(out)
    flags = ["--out", out, "--workers", 0, "--device", "cpu", "--no-progress"]
    try:
        r = run_tree(
            cpu_processes(2, SERVE, bundle, photos, *flags), DEADLINE_S, env=subprocess_env()
        )  # kills torchrun's workers too
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode != 0 and f"pid {holder.pid}" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("p.csv.part*"))


def test_two_spellings_of_one_out_share_one_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with OutputLock(tmp_path / "real" / "p.csv"):
        assert OutputLock(tmp_path / "alias" / ".." / "real" / "p.csv").acquire() is not None
        assert OutputLock(tmp_path / "alias" / "p.csv").acquire() is not None


@pytest.mark.parametrize("special", ["fifo", "devnull"])
def test_an_out_that_is_not_a_regular_file_is_refused_even_with_overwrite(
    bundle, photos, tmp_path, capsys, special
):
    if special == "fifo":
        out = tmp_path / "p.csv"
        os.mkfifo(out)
    else:
        out = tmp_path / "null.csv"
        out.symlink_to("/dev/null")
    err = _refused(capsys, bundle, photos, "--out", out, "--workers", 0, "--overwrite")
    assert "not a regular file" in err and os.path.exists(out) and os.path.exists("/dev/null")


def test_a_record_path_taken_by_a_folder_is_one_error_line(bundle, photos, tmp_path, capsys):
    out = tmp_path / "p.csv"
    meta_path(out).mkdir()
    err = _refused(capsys, bundle, photos, "--out", out, "--workers", 0)
    assert "cannot write" in err and "meta.json" in err
