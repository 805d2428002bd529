"""Hostile input round 2, training side: one writer per run folder, resume only what fits, a run is
finished only with its test metrics, and an interrupted swap is repaired at the next start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.errors import UserError
from core.lock import OutputLock
from tests.train.helpers import REPO

FAST = ["model.arch=cifar_cnn", "train.batch_size=8", "train.epochs=1"]

HOLDER = (
    "import sys, time; from pathlib import Path; from core.lock import OutputLock\n"
    "lock = OutputLock(Path(sys.argv[1]), 'training'); assert lock.acquire() is None\n"
    "print('held', flush=True); time.sleep(120)"
)


@pytest.fixture
def holder():
    """A separate process holding a run folder's lock, as a running training does."""
    procs = []

    def _hold(run_dir):
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield _hold
    for p in procs:
        p.kill()
        p.wait(timeout=30)


def test_m12_a_second_training_on_a_held_run_folder_is_refused_naming_the_pid(
    tmp_path, demo_root, train_inproc, holder
):
    p = holder(tmp_path / "runs" / "shared")
    with pytest.raises(UserError, match=rf"another training \(pid {p.pid}"):
        train_inproc(f"data.root={demo_root}", "run.name=shared", *FAST)
    assert not (tmp_path / "runs" / "shared" / "best").exists()


def test_m12_resume_auto_honours_the_lock(tmp_path, demo_root, train_inproc, holder):
    first = train_inproc(f"data.root={demo_root}", "run.name=r", *FAST)
    assert first.exit_code == 0
    p = holder(first.run_dir)
    with pytest.raises(UserError, match=rf"pid {p.pid}"):
        train_inproc(f"data.root={demo_root}", "run.name=r", "train.resume=auto", *FAST[:2], "train.epochs=2")


def test_m12_the_lock_is_released_when_training_ends(tmp_path, demo_root, train_inproc):
    result = train_inproc(f"data.root={demo_root}", "run.name=free", *FAST)
    assert OutputLock(result.run_dir).acquire() is None


def test_m14_resuming_a_run_of_another_model_is_one_line(tmp_path, demo_root, train_inproc):
    train_inproc(f"data.root={demo_root}", "run.name=other", *FAST)
    with pytest.raises(UserError, match="does not fit the model this config builds") as exc:
        train_inproc(
            f"data.root={demo_root}",
            "run.name=other",
            "train.resume=auto",
            "model.arch=resnet18",
            "train.epochs=2",
        )
    assert "\n" not in str(exc.value) and "config.yaml" in str(exc.value)


def test_m15_a_run_stopped_during_its_test_evaluation_resumes_that_evaluation(
    tmp_path, demo_root, train_inproc, capsys
):
    done = train_inproc(f"data.root={demo_root}", "run.name=t", *FAST)
    metrics = done.run_dir / "test_metrics.json"
    assert metrics.is_file()
    metrics.unlink()  # what a SIGTERM during the final evaluation leaves: last/ and best/, no metrics
    capsys.readouterr()
    again = train_inproc(f"data.root={demo_root}", "run.name=t", "train.resume=auto", *FAST)
    assert again.exit_code == 0 and metrics.is_file()
    assert json.loads(metrics.read_text())["accuracy"] == done.test_metrics["accuracy"]
    assert "final evaluation on test/ did not finish" in capsys.readouterr().out
    # and once the metrics exist, the run is finished: nothing more to do
    assert train_inproc(f"data.root={demo_root}", "run.name=t", "train.resume=auto", *FAST).model is None


def test_m16_a_best_swap_interrupted_between_its_renames_is_repaired_at_the_next_start(
    tmp_path, demo_root, train_inproc, capsys
):
    done = train_inproc(f"data.root={demo_root}", "run.name=s", *FAST)
    best = done.run_dir / "best"
    weights = (best / "model.safetensors").read_bytes()
    best.rename(done.run_dir / ".best.old")  # the crash: best/ moved aside, the new one not yet in place
    (done.run_dir / ".best.x1.tmp").mkdir()  # and a half-written new one
    capsys.readouterr()
    with pytest.raises(UserError, match="already holds a run"):
        train_inproc(f"data.root={demo_root}", "run.name=s", *FAST)
    assert f"repaired {best}" in capsys.readouterr().out
    assert (best / "model.safetensors").read_bytes() == weights
    assert not (done.run_dir / ".best.old").exists() and not (done.run_dir / ".best.x1.tmp").exists()


def test_m16_leftover_temp_folders_need_the_lock(tmp_path):
    """A live writer's temp folder is not a leftover: repair runs only under the run's lock (see resolve_run)."""
    from core.fsio import repair_swaps

    (tmp_path / "best").mkdir()
    (tmp_path / ".best.abc.tmp").mkdir()
    assert repair_swaps(tmp_path, ("best",)) == [
        f"removed 1 leftover folder(s) of an interrupted save of {tmp_path / 'best'}"
    ]
    assert repair_swaps(tmp_path, ("best",)) == []


def test_m12_lock_file_sits_beside_the_run_folder_and_goes_with_its_holder(tmp_path):
    run = tmp_path / "runs" / "r"
    lock = OutputLock(run, "training", "choose another run.name")
    assert lock.acquire() is None
    refusal = OutputLock(run, "training", "choose another run.name").acquire()
    assert "another training" in refusal and refusal.endswith("choose another run.name")
    lock.release()
    assert not (tmp_path / "runs" / "r.lock").exists()
