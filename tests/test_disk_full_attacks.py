"""Attacks on the disk-full handling (M24): a file past the size limit (EFBIG: `ulimit -f`, a FAT32 stick), a
full disk inside torch.save, in the embeddings file, in the sort manifest and in the demo data set. Each is one
line, exit 2, naming a path the user knows; nothing written before is lost, nothing half-written is left.

The real commands run in a subprocess under RLIMIT_FSIZE (the kernel refuses the write, EFBIG; no disk is
filled), or a write goes to /dev/full (the kernel's ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from core import errors
from core.fsio import atomic_path

REPO = Path(__file__).resolve().parents[1]


def _run(limit: int, *argv: object) -> subprocess.CompletedProcess:
    """`python -m argv...` with files capped at `limit` bytes; stdout and stderr are pipes (no limit)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    env.pop("IMGCLF_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", *map(str, argv)],
        cwd=REPO,
        env=env,
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(proc: subprocess.CompletedProcess, names: Path) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(names) in errors[0], proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """A tiny bundle and 40 labelled images (the CSV of 40 rows is ~5 KB, each image ~1 KB)."""
    from tests.export.export_helpers import save_tiny_bundle
    from tests.serve.helpers import save_picture

    root = tmp_path_factory.mktemp("served")
    bundle = save_tiny_bundle(root / "best", arch="cifar_cnn")
    for c in ("1", "2", "3", "4"):
        for i in range(10):
            save_picture(root / "lab" / c / f"{i:02d}.png", seed=10 * int(c) + i, size=(24, 20))
    return {"bundle": bundle, "images": root / "lab"}


def _serve(limit: int, served: dict[str, Path], out: Path, *extra: object) -> subprocess.CompletedProcess:
    args = [served["bundle"], served["images"], "--out", out, "--workers", 0, "--batch-size", 4]
    return _run(limit, "serve.main", *args, "--no-progress", *extra)


# --- EFBIG is a full disk too, with its own fix ---------------------------------------------------------


def test_efbig_is_reported_like_a_full_disk_with_the_size_limit_as_the_fix(tmp_path):
    exc = OSError(errno.EFBIG, "File too large", str(tmp_path / "preds.csv"))
    assert errors.disk_full(exc) is exc
    line = errors.disk_full_line(exc)
    assert line.startswith(f"file too large writing {tmp_path / 'preds.csv'}") and "ulimit -f" in line, line
    assert errors.full_errno(RuntimeError("I/O error: File too large (os error 27)")) == errno.EFBIG
    with pytest.raises(OSError) as err, atomic_path(tmp_path / "x.json"):
        raise RuntimeError("Error while serializing: I/O error: File too large (os error 27)")
    assert err.value.errno == errno.EFBIG and err.value.filename == str(tmp_path / "x.json")


def test_serve_csv_past_the_file_size_limit_is_one_line_and_keeps_whole_rows(served, tmp_path):
    out = tmp_path / "p.csv"
    proc = _serve(2000, served, out)
    line = _one_error_line(proc, out)
    assert line.startswith("error: file too large writing"), line
    text = out.read_text()
    assert text.endswith("\n") and 0 < text.count("\n") < 41  # whole rows up to the limit: a resume point


def test_serve_embeddings_past_the_limit_name_the_npy_and_leave_no_work_file(served, tmp_path):
    """The features file (40 × 84 floats = 13 KB) passes the limit before the CSV (5 KB) does: the error
    names --embeddings, and its hidden work file goes (closing it used to re-fail and hide the name)."""
    out, npy = tmp_path / "p.csv", tmp_path / "e.npy"
    proc = _serve(12000, served, out, "--embeddings", npy)
    _one_error_line(proc, npy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.csv.meta.json"]


def test_serve_evaluation_figure_past_the_limit_names_the_figure_and_keeps_the_csv(served, tmp_path):
    out = tmp_path / "p.csv"
    proc = _serve(12000, served, out, "--evaluate")
    _one_error_line(proc, tmp_path / "p_eval" / "confusion_matrix.png")
    assert out.read_text().count("\n") == 41  # the predictions were all written before the figures
    assert not [p for p in (tmp_path / "p_eval").iterdir() if p.name.startswith(".")]  # no temp file left


# --- torch.save on a full disk ----------------------------------------------------------------------------


class _OneProcess:
    """What save_last asks of an Accelerator, with save_state writing like Accelerate's (torch.save to a
    path) into a file that is /dev/full: the kernel's own ENOSPC."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        import torch

        os.makedirs(folder)
        os.symlink("/dev/full", os.path.join(folder, "optimizer.bin"))
        torch.save({"exp_avg": torch.zeros(50_000)}, os.path.join(folder, "optimizer.bin"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_torch_save_on_a_full_disk_names_last_optimizer_bin(tmp_path):
    """torch.save given a path writes through C++ and fails with "unexpected pos" (no errno, a traceback)."""
    from train.checkpoint import TrainerState, save_last

    with pytest.raises(OSError) as exc:
        save_last(_OneProcess(), tmp_path, TrainerState())
    assert exc.value.errno == errno.ENOSPC, exc.value
    assert exc.value.filename == str(tmp_path / "last" / "optimizer.bin")
    assert not (tmp_path / "last").exists()


def test_train_checkpoint_past_the_limit_is_one_line_and_keeps_best(tmp_path):
    """A 300 KB cap: best/ (247 KB) is written, last/optimizer.bin (500 KB) is not."""
    from core.demo_data import make_demo_dataset

    data = make_demo_dataset(
        tmp_path / "d", num_classes=4, per_split={"train": 6, "valid": 3}, size=36, seed=1
    )
    runs = tmp_path / "runs"
    argv = ["--config", REPO / "configs" / "demo.yaml", f"data.root={data}", f"run.output_dir={runs}"]
    argv += ["run.name=r", "train.epochs=1", "model.arch=cifar_cnn", "preprocess.resize=36"]
    argv += ["preprocess.crop=32", "data.num_workers=0"]
    proc = _run(300_000, "train.main", *argv)
    _one_error_line(proc, runs / "r" / "last" / "optimizer.bin")
    assert (runs / "r" / "best" / "bundle.json").is_file() and not (runs / "r" / "last").exists()


# --- the sort manifest -----------------------------------------------------------------------------------


def test_sort_after_a_full_manifest_write_reruns_and_undoes(served, tmp_path):
    """A full disk mid-line used to leave a torn line that the next run appended after: every later run
    (the rerun that "adds the rest", --undo) then refused the manifest as damaged."""
    preds = tmp_path / "p.csv"
    assert _serve(10**9, served, preds).returncode == 0
    dest = tmp_path / "sorted"
    proc = _run(5000, "serve.sort", preds, "--to", dest, "--mode", "copy")
    _one_error_line(proc, dest / ".imgclf-sort.jsonl")
    assert (dest / ".imgclf-sort.jsonl").read_text().endswith("\n")
    again = _run(10**9, "serve.sort", preds, "--to", dest, "--mode", "copy")
    assert again.returncode == 0, again.stderr
    placed, before = map(int, re.search(r"(\d+) accepted .*; (\d+) already sorted", again.stdout).groups())
    assert placed + before == 40 and before > 0, again.stdout  # the rest added, nothing twice
    assert len(list(dest.glob("*/*.png"))) == 40
    undo = _run(10**9, "serve.sort", preds, "--to", dest, "--undo")
    assert undo.returncode == 0 and "undone 40 placements" in undo.stdout, undo.stderr


def test_sort_manifest_torn_line_from_a_kill_is_cut_before_the_next_line(tmp_path):
    from serve.sort_files import MANIFEST, Manifest

    Manifest(tmp_path).write("intent", src="/a.png", dest="x/a.png", kind="class")
    with open(tmp_path / MANIFEST, "a") as fh:
        fh.write('{"op": "done", "src": "/a')  # a kill mid-line
    Manifest(tmp_path).write("intent", src="/b.png", dest="x/b.png", kind="class")
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["src"] for line in lines] == ["/a.png", "/b.png"]
    assert Manifest(tmp_path).state == {"/a.png": "intent", "/b.png": "intent"}


# --- the serve CSV writer -------------------------------------------------------------------------------


def test_a_failed_csv_write_never_closes_a_descriptor_it_no_longer_owns(tmp_path, monkeypatch):
    """The writer dropped its buffer by closing its fd by number: a file opened next (a read thread's
    image) got that number, and the writer's close() then wrote into it and closed it."""
    from serve import writer
    from serve.writer import Layout, RowWriter

    real_open = open

    class FullOnce:
        def __init__(self, fh):
            self.fh, self.calls = fh, 0

        def write(self, text):
            self.calls += 1
            if self.calls > 1:
                self.fh.write(text)  # buffered, then refused on flush
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(writer, "open", lambda *a, **k: FullOnce(real_open(*a, **k)), raising=False)
    layout = Layout(classes=("a", "b"), display_names=("a", "b"), topk=1)
    w = RowWriter(tmp_path / "p.csv", layout)
    with pytest.raises(OSError):
        w._put("x" * 100 + "\n")
    victim = real_open(tmp_path / "victim.txt", "w+")  # takes the lowest free descriptor
    try:
        w.close()
        os.fstat(victim.fileno())  # still open: not closed by the writer
        victim.seek(0)
        assert victim.read() == ""
    finally:
        victim.close()


# --- the demo data set ------------------------------------------------------------------------------------


def test_demo_data_past_the_limit_names_dst_and_leaves_no_hidden_folder(tmp_path):
    proc = _run(3000, "train.demo_data", tmp_path / "demo")
    line = _one_error_line(proc, tmp_path / "demo")
    assert line.startswith("error: file too large writing"), line
    assert list(tmp_path.iterdir()) == []


# --- export ------------------------------------------------------------------------------------------------


def test_export_report_on_a_full_disk_leaves_no_stale_report_beside_new_models(tmp_path, monkeypatch, capsys):
    """Re-export into one --out: the new models are published, then the report write fails. The previous
    export's report must not stay, describing (sizes, hashes) model files that were just replaced."""
    from export.report import ExportReport
    from tests.export.export_helpers import run_export, save_tiny_bundle

    out = tmp_path / "export"
    assert run_export(save_tiny_bundle(tmp_path / "a", arch="cifar_cnn", seed=0), "--out", out) == 0
    old_report = (out / "export_report.json").read_text()

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ExportReport, "write", full)
    capsys.readouterr()
    assert run_export(save_tiny_bundle(tmp_path / "b", arch="cifar_cnn", seed=1), "--out", out) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and str(out / "export_report.json") in err[0], err
    assert (out / "model.onnx").is_file()  # the gated new model, whole
    assert not (out / "export_report.json").exists() or (out / "export_report.json").read_text() != old_report


def test_serve_overwrite_with_a_full_disk_at_meta_json_leaves_no_stale_sidecar(served, tmp_path, monkeypatch):
    """--overwrite clears the old CSV; when the new <out>.meta.json then cannot be written, the old one must
    not stay behind, tying a later --resume to a model whose rows are gone."""
    from serve import provenance
    from tests.serve.helpers import serve

    out = tmp_path / "p.csv"
    argv = [served["bundle"], served["images"], "--out", out, "--workers", 0, "--no-progress"]
    assert serve(*argv) == 0 and provenance.meta_path(out).is_file()

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(provenance, "write_json_atomic", full)
    with pytest.raises(SystemExit) as exc:
        serve(*argv, "--overwrite")
    assert exc.value.code == 2
    assert not out.exists() and not provenance.meta_path(out).exists()
