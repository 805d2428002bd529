"""A run stopped by a real SIGTERM mid-epoch resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import shlex
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.proctree import run_tree
from tests.train.helpers import DEMO_RECIPE, MAIN, SETUP, TINY, subprocess_env
from train.signals import TEST_SIGTERM_ENV

# Training batches before the test hook's SIGTERM: all 8 of epoch 1 and 4 of epoch 2.
SIGTERM_AT_BATCH = 12
DEADLINE_S = 240  # ~25 s alone, ~60 s on the loaded 2-core CI box


def _cut_args(tmp_path, root, extra=()) -> list[str]:
    """The command-line arguments of the run that _start_and_terminate stops."""
    return [
        "--config",
        str(DEMO_RECIPE),
        f"data.root={root}",
        "run.name=cut",
        f"run.output_dir={tmp_path / 'runs'}",
        *TINY,
        *SETUP,
        *extra,
    ]


def _start_and_terminate(tmp_path, root, extra=()):
    """Launch a run that SIGTERMs itself (train.signals' test hook) after SIGTERM_AT_BATCH training batches;
    return (code, stdout, stderr). The signal is real and lands at an exact step, whatever the machine's speed."""
    cmd = [sys.executable, str(MAIN), *_cut_args(tmp_path, root, extra)]
    env = {**subprocess_env(tmp_path), TEST_SIGTERM_ENV: str(SIGTERM_AT_BATCH)}
    done = run_tree(cmd, DEADLINE_S, cwd=tmp_path, env=env)
    return done.returncode, done.stdout, done.stderr


def _weights(run_dir):
    return load_file(str(run_dir / "last" / "model.safetensors"))


@pytest.mark.slow
def test_resume_after_sigterm_mid_epoch_matches_an_uninterrupted_run(tmp_path, small_root, train_inproc):
    code, out, err = _start_and_terminate(tmp_path, small_root)
    assert code == 143, err[-2000:]
    state = json.loads((tmp_path / "runs" / "cut" / "last" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 4), "the stop lands right after the hook's batch"
    assert "stop requested" in out
    last = tmp_path / "runs" / "cut" / "last"
    resume = [line for line in out.splitlines() if line.startswith("to resume: ")]
    assert resume == [
        "to resume: " + shlex.join(["imgclf-train", *_cut_args(tmp_path, small_root), f"train.resume={last}"])
    ]

    resumed = train_inproc(f"data.root={small_root}", "run.name=cut", "train.resume=auto", *SETUP)
    straight = train_inproc(f"data.root={small_root}", "run.name=straight", *SETUP)
    assert resumed.exit_code == straight.exit_code == 0
    a, b = _weights(resumed.run_dir), _weights(straight.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for ra, rb in zip(resumed.state.rows, straight.state.rows, strict=True):
        assert {
            k: ra[k] for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")
        } == pytest.approx(
            {k: rb[k] for k in ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr")}, abs=1e-6
        )


# ─── a crash inside the last/ swap (core.fsio.swap_dir: last → .last.old, .last.tmp → last) ─────────────

FAST = ["model.arch=cifar_cnn", "train.batch_size=8"]


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, small_root):
    """A finished 1-epoch run named like an unnamed one (`demo-<time>`, for train.resume=auto's search)."""
    from core.config import load_config
    from tests.train.conftest import _reset_accelerate
    from train.cli import TrainJob
    from train.run import train

    out = tmp_path_factory.mktemp("one_epoch") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCELERATE_USE_CPU", "1")
        cfg = load_config(
            DEMO_RECIPE,
            [
                f"run.output_dir={out}",
                *TINY,
                *FAST,
                f"data.root={small_root}",
                "train.epochs=1",
                "run.name=demo-20260101-000000",
            ],
        )
        _reset_accelerate()
        try:
            result = train(TrainJob(cfg, "demo"))
        finally:
            _reset_accelerate()
    return result


def _between_the_renames(run):
    (run / "last").rename(run / ".last.old")
    shutil.copytree(run / ".last.old", run / ".last.tmp")  # the new save, finished but not yet in place


def _after_both_renames(run):
    shutil.copytree(run / "last", run / ".last.old")


def _while_writing_the_new_one(run):
    shutil.copytree(run / "last", run / ".last.tmp")
    (run / ".last.tmp" / "trainer_state.json").unlink()  # written last: its absence marks an unfinished save
    model = run / ".last.tmp" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])


CRASHES = {
    "between_the_renames": _between_the_renames,
    "after_both_renames": _after_both_renames,
    "while_writing_the_new_one": _while_writing_the_new_one,
}
RESUMES = {
    "auto_with_name": lambda run: [f"run.name={run.name}", "train.resume=auto"],
    "auto_newest_run": lambda run: ["train.resume=auto"],
    "path_to_last": lambda run: [f"train.resume={run / 'last'}"],
    "path_to_run": lambda run: [f"train.resume={run}"],
}


@pytest.mark.parametrize("resume", RESUMES)
@pytest.mark.parametrize("crash", CRASHES)
def test_a_crash_anywhere_in_the_checkpoint_swap_resumes_from_the_last_good_checkpoint(
    crash, resume, one_epoch, tmp_path, train_inproc, small_root
):
    run = shutil.copytree(one_epoch.run_dir, tmp_path / "runs" / one_epoch.run_dir.name)
    CRASHES[crash](run)
    result = train_inproc(f"data.root={small_root}", *FAST, "train.epochs=2", *RESUMES[resume](run))
    assert result.run_dir == run
    assert result.state.rows[0] == one_epoch.state.rows[0], (
        "epoch 1 must come from the checkpoint, not a rerun"
    )
    assert [r["epoch"] for r in result.state.rows] == [1, 2]
    assert json.loads((run / "last" / "trainer_state.json").read_text())["epoch"] == 2
    assert not (run / ".last.old").exists()


# ─── a damaged checkpoint ─────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
)
def test_a_truncated_checkpoint_file_is_one_error_line_naming_it_and_exit_2(
    name, one_epoch, tmp_path, capsys, monkeypatch, small_root
):
    from tests.train.conftest import _reset_accelerate
    from train.main import main

    run = shutil.copytree(one_epoch.run_dir, tmp_path / "runs" / "cut")
    damaged = run / "last" / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    _reset_accelerate()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "--config",
                str(DEMO_RECIPE),
                f"run.output_dir={tmp_path / 'runs'}",
                "run.name=cut",
                "train.resume=auto",
                f"data.root={small_root}",
                *TINY,
                *FAST,
                "train.epochs=2",
            ]
        )
    _reset_accelerate()
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"error: {damaged} is truncated") and len(err.strip().splitlines()) == 1
    assert f"delete {run / 'last'}" in err


# ─── what a stopped or resumed run says ─────────────────────────────────────────────────────────────────


def test_a_stopped_run_prints_the_exact_command_that_resumes_it(
    one_epoch, tmp_path, capsys, monkeypatch, small_root
):
    """A SIGTERM (the Ctrl-C path too: one handler) mid-run: the last line is the command, with the run's path."""
    from tests.train.conftest import _reset_accelerate
    from train.main import main

    argv = [
        "--config",
        str(DEMO_RECIPE),
        f"run.output_dir={tmp_path / 'runs'}",
        "run.name=stopped",
        f"data.root={small_root}",
        *TINY,
        *FAST,
        "train.epochs=2",
    ]
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setenv(TEST_SIGTERM_ENV, "2")  # a real SIGTERM to this process after 2 training batches
    _reset_accelerate()
    try:
        assert main(argv) == 143
    finally:
        _reset_accelerate()
    out = capsys.readouterr().out.splitlines()
    last = tmp_path / "runs" / "stopped" / "last"
    assert out[-1] == "to resume: " + shlex.join(["imgclf-train", *argv, f"train.resume={last}"])
    assert (last / "trainer_state.json").is_file()


def test_resuming_with_another_config_names_each_changed_key_with_old_and_new_values(
    one_epoch, tmp_path, train_inproc, small_root, capsys
):
    run = shutil.copytree(one_epoch.run_dir, tmp_path / "runs" / "changed")
    result = train_inproc(
        f"data.root={small_root}",
        *FAST,
        "train.epochs=2",
        "augment.hflip=0.0",
        f"train.resume={run / 'last'}",
        "data.num_workers=0",  # not part of what a run learns: never listed
    )
    assert result.exit_code == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if "config differs" in line]
    assert warning == [
        "warning: the config differs from the one this checkpoint was trained with: "
        "augment.hflip 0.5 → 0.0; train.epochs 1 → 2"
    ]
