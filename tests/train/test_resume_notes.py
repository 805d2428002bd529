"""train.resume_notes: the resume command a stopped run prints, and the keys a resume's config changed."""

from __future__ import annotations

from pathlib import Path

from core.config import load_config
from train.resume_notes import config_changes, config_differs_warning, read_run_config, resume_line


def test_resume_line_is_the_given_command_with_the_checkpoint_path_replacing_any_resume_override():
    line = resume_line(
        ("--config", "my recipe.yaml", "train.resume=auto", "train.epochs=9"), Path("runs/a/last")
    )
    assert line == "to resume: imgclf-train --config 'my recipe.yaml' train.epochs=9 train.resume=runs/a/last"


def test_several_processes_get_the_override_to_add_to_their_launch_line():
    line = resume_line(("--config", "x.yaml"), Path("runs/a/last"), processes=4)
    assert line == "to resume, rerun the same accelerate launch line with train.resume=runs/a/last added"


def test_config_changes_list_only_keys_that_change_what_is_learned_in_config_order():
    old = load_config(None, ["train.epochs=1", "data.root=/a"]).to_dict()
    new = load_config(None, ["train.epochs=2", "data.root=/b", "model.head.hidden=[64,32]"]).to_dict()
    assert config_changes(old, new) == ["model.head.hidden [] → [64, 32]", "train.epochs 1 → 2"]


def test_a_long_value_is_cut_to_about_a_hundred_characters():
    old, new = {"model": {"head": {"hidden": []}}}, {"model": {"head": {"hidden": list(range(100))}}}
    (change,) = config_changes(old, new)
    shown_new = change.split(" → ")[1]
    assert len(shown_new) == 100 and shown_new.endswith("…")


def test_a_key_missing_on_one_side_is_shown_as_absent():
    assert config_changes({"train": {"ema": 0.9}}, {"train": {}}) == ["train.ema 0.9 → (absent)"]


def test_without_the_old_config_the_warning_still_says_it_differs(tmp_path):
    assert read_run_config(tmp_path / "run" / "last") is None  # no config.yaml beside last/
    new = load_config(None, []).to_dict()
    assert config_differs_warning(None, new) == (
        "warning: the config differs from the one this checkpoint was trained with"
    )
