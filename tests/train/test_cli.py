"""train/main.py refuses user mistakes with one line on stderr and exit code 2, before any training."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.demo_data import make_demo_dataset
from tests.train.helpers import DEMO_RECIPE, MAIN, REPO, subprocess_env
from train.main import main


def _fails_with(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    return err


def test_unknown_key_exits_2_with_one_line_naming_the_nearest_key(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(MAIN), "--config", str(DEMO_RECIPE), "train.epoch=3"],
        check=False,
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown config key 'train.epoch'; did you mean 'train.epochs'?"
    ]
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_missing_data_folder_exits_2_naming_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    missing = tmp_path / "no_such_data"
    err = _fails_with(
        capsys, "--config", str(DEMO_RECIPE), f"data.root={missing}", f"run.output_dir={tmp_path / 'runs'}"
    )
    assert str(missing) in err and not (tmp_path / "runs").exists()


def test_missing_validation_split_exits_2_naming_the_accepted_names(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    root = make_demo_dataset(tmp_path / "data", num_classes=2, per_split={"train": 1}, size=24)
    err = _fails_with(capsys, "--config", str(DEMO_RECIPE), f"data.root={root}", f"run.output_dir={tmp_path}")
    assert "no validation split" in err and str(root / "valid") in err and str(root / "validation") in err


def test_empty_class_folder_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    root = make_demo_dataset(tmp_path / "data", num_classes=2, per_split={"train": 1, "valid": 1}, size=24)
    (root / "train" / "3").mkdir()
    err = _fails_with(capsys, "--config", str(DEMO_RECIPE), f"data.root={root}", f"run.output_dir={tmp_path}")
    assert str(root / "train" / "3") in err


def test_an_existing_run_name_is_not_overwritten_without_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    (tmp_path / "runs" / "taken" / "best").mkdir(parents=True)
    err = _fails_with(
        capsys,
        "--config",
        str(DEMO_RECIPE),
        "run.name=taken",
        f"run.output_dir={tmp_path / 'runs'}",
        f"data.root={REPO}",
    )
    assert "train.resume=auto" in err


def test_an_output_dir_that_is_a_file_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    root = make_demo_dataset(tmp_path / "data", num_classes=2, per_split={"train": 1, "valid": 1}, size=24)
    (tmp_path / "runs").write_text("a file, not a folder")
    err = _fails_with(
        capsys,
        "--config",
        str(DEMO_RECIPE),
        f"data.root={root}",
        f"run.output_dir={tmp_path / 'runs'}",
        "run.name=r",
    )
    assert str(tmp_path / "runs") in err and "run.output_dir" in err


# ─── the way in: one torch-free CLI module, a frozen job, entry points that run from any folder ────────


def test_parse_job_gives_a_frozen_job_with_the_checked_config_and_the_recipe_stem():
    import dataclasses

    from train.cli import parse_job

    job = parse_job(["--config", str(DEMO_RECIPE), "train.epochs=3"])
    assert job.stem == "demo" and job.config.train.epochs == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.stem = "other"  # type: ignore[misc]
    assert parse_job([]).stem == "run"  # no recipe: the defaults, runs named run-<time>


def test_python_m_train_main_runs_from_another_folder_and_help_shows_the_defaults(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train.main", "--help"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: imgclf-train")
    assert "(default: none" in proc.stdout  # argparse help states each default
    assert "accelerate launch --quiet -m train.main" in proc.stdout


def test_console_scripts_name_the_entry_points_that_exist():
    tomllib = pytest.importorskip("tomllib")
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("imgclf-train", "imgclf-split", "imgclf-demo-data"):
        module, func = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    assert scripts["imgclf-train"] == "train.main:main"
