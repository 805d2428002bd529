"""Exporting a run that is still training warns in one line: best/ can be replaced after the export."""

from __future__ import annotations

import json

import pytest
import yaml

from core.lock import OutputLock, lock_path
from export.live_run import training_warning
from tests.export.export_helpers import run_export, save_tiny_bundle


def make_run(root, epochs_done: int | None = None, planned: int = 5, finished: bool = False):
    """runs/r/{best/, config.yaml, last/trainer_state.json} as train writes them; returns best/."""
    run = root / "runs" / "r"
    best = save_tiny_bundle(run / "best", arch="cifar_cnn")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": planned, "batch_size": 8}}))
    if epochs_done is not None:
        (run / "last").mkdir()
        state = {"epoch": epochs_done, "step": 0, "finished": finished}
        (run / "last" / "trainer_state.json").write_text(json.dumps(state))
    return best


def test_a_held_run_lock_is_still_training_naming_the_holder(tmp_path):
    best = make_run(tmp_path, epochs_done=5)  # even a last/ at its end: the lock is what counts
    with OutputLock(best.parent):
        warning = training_warning(best)
    assert warning.startswith(f"{best.parent} is still training (pid ")
    assert "best/ may be replaced after this export" in warning
    assert training_warning(best) is None  # released: a finished run exports quietly


def test_a_lock_file_left_by_a_killed_run_is_not_training(tmp_path):
    best = make_run(tmp_path, epochs_done=5)
    lock_path(best.parent).write_text(json.dumps({"pid": 1, "host": "gone"}))
    assert training_warning(best) is None


def test_last_before_the_planned_epochs_is_unfinished(tmp_path):
    best = make_run(tmp_path, epochs_done=2, planned=5)
    warning = training_warning(best)
    assert warning.startswith(f"{best.parent} has not finished training (2 of 5 epochs in last/)")


@pytest.mark.parametrize("done,finished", [(5, False), (3, True)])
def test_a_run_at_its_last_epoch_or_early_stopped_gives_no_warning(tmp_path, done, finished):
    assert training_warning(make_run(tmp_path, epochs_done=done, finished=finished)) is None


def test_a_bundle_outside_a_run_folder_gives_no_warning(tmp_path):
    assert training_warning(save_tiny_bundle(tmp_path / "copied", arch="cifar_cnn")) is None


def test_export_of_a_training_run_warns_once_and_still_exports(tmp_path, demo_root, capsys):
    best = make_run(tmp_path, epochs_done=1)
    with OutputLock(best.parent):
        rc = run_export(best, "--images", demo_root / "valid", "--exporter", "torchscript", "--no-bench")
    assert rc == 0 and (best.parent / "export" / "model.onnx").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"[export] WARNING: {best.parent} is still training")
