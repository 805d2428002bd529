"""The config loader: typos name the nearest key, wrong types name the expected one, overrides win."""
from pathlib import Path

import pytest

from core.config import Config, load_config, parse_override, reference_markdown
from core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.train.optimizer.name == "adam"


def test_yaml_file_and_overrides_are_merged_with_overrides_winning(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epochs: 5\n  optimizer:\n    name: sgd\nmodel:\n  head:\n    hidden: [64]\n")
    cfg = load_config(p, ["train.epochs=7", "model.head.dropout=0.5"])
    assert cfg.train.epochs == 7
    assert cfg.train.optimizer.name == "sgd"
    assert cfg.model.head.hidden == [64]
    assert cfg.model.head.dropout == 0.5


@pytest.mark.parametrize("override, nearest", [
    ("train.epoch=3", "train.epochs"),
    ("model.head.hiden=[1]", "model.head.hidden"),
    ("train.optimizer.lrr=0.1", "train.optimizer.lr"),
    ("trian.epochs=3", "train"),
])
def test_unknown_key_names_the_nearest_valid_key(override, nearest):
    with pytest.raises(UserError, match=f"unknown config key .*did you mean '{nearest}'"):
        load_config(None, [override])


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  rooot: /x\n")
    with pytest.raises(UserError, match="'data.rooot'.*'data.root'"):
        load_config(p)


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=ten", "expected int"),
    ("train.epochs=2.5", "expected int"),
    ("train.optimizer.lr=fast", "expected float"),
    ("model.head.hidden=12", "expected list of int"),
    ("train.compile=maybe", "expected bool"),
])
def test_wrong_type_names_the_expected_type(override, expected):
    with pytest.raises(UserError, match=expected):
        load_config(None, [override])


def test_invalid_choice_lists_valid_values_and_suggests_one():
    with pytest.raises(UserError, match="did you mean 'adamw'.*valid: sgd, adam, adamw, adadelta"):
        load_config(None, ["train.optimizer.name=adamww"])


def test_freeze_accepts_backbone_none_or_epochs_only():
    assert load_config(None, ["model.freeze=3"]).model.freeze == 3
    assert load_config(None, ["model.freeze=none"]).model.freeze == "none"
    with pytest.raises(UserError, match="model.freeze"):
        load_config(None, ["model.freeze=head"])


def test_crop_larger_than_resize_is_rejected():
    with pytest.raises(UserError, match="preprocess.crop"):
        load_config(None, ["preprocess.crop=300", "preprocess.resize=256"])


def test_missing_and_malformed_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_override_values_parse_as_yaml():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    with pytest.raises(UserError, match="key=value"):
        parse_override("train.epochs")


def test_hash_ignores_paths_and_names_but_not_hyperparameters():
    a = load_config(None, ["run.name=a", "data.root=/x"])
    b = load_config(None, ["run.name=b", "data.root=/y"])
    c = load_config(None, ["train.optimizer.lr=0.5"])
    assert a.hash() == b.hash() != c.hash()


def test_reference_table_lists_every_key_with_its_help():
    table = reference_markdown()
    for key in ("train.optimizer.lr", "model.head.hidden", "preprocess.crop", "data.source"):
        assert f"`{key}`" in table


def test_every_shipped_recipe_loads():
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    names = {p.stem for p in recipes}
    assert {"flowers102_densenet161", "flowers102_vgg16", "caltech101_resnet50", "cifar10_cnn", "demo"} <= names
    for p in recipes:
        load_config(p)


def test_readme_config_reference_matches_the_code():
    readme = (REPO / "README.md").read_text()
    assert reference_markdown() in readme, "README config table is stale: paste `python -m core.config` output"
