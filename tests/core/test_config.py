"""The config loader: typos name the nearest key, wrong types name the expected one, overrides win."""

import dataclasses
import typing
from pathlib import Path

import pytest

from core import workers
from core.config import Config, load_config, parse_override
from core.config_fields import check_value
from core.config_reference import reference_markdown, reference_text
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


@pytest.mark.parametrize(
    "override, nearest",
    [
        ("train.epoch=3", "train.epochs"),
        ("model.head.hiden=[1]", "model.head.hidden"),
        ("train.optimizer.lrr=0.1", "train.optimizer.lr"),
        ("trian.epochs=3", "train"),
    ],
)
def test_unknown_key_names_the_nearest_valid_key(override, nearest):
    with pytest.raises(UserError, match=f"unknown config key .*did you mean '{nearest}'"):
        load_config(None, [override])


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  rooot: /x\n")
    with pytest.raises(UserError, match="'data.rooot'.*'data.root'"):
        load_config(p)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=ten", "expected int"),
        ("train.epochs=2.5", "expected int"),
        ("train.optimizer.lr=fast", "expected float"),
        ("model.head.hidden=12", "expected list of int"),
        ("train.compile=maybe", "expected bool"),
    ],
)
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
    assert {
        "flowers102_densenet161",
        "flowers102_vgg16",
        "caltech101_resnet50",
        "cifar10_cnn",
        "demo",
    } <= names
    for p in recipes:
        load_config(p)


def test_docs_config_reference_matches_the_code():
    reference = (REPO / "docs" / "config.md").read_text()
    assert reference_markdown() in reference, (
        "docs/config.md is stale: paste `python -m core.config --markdown` into it"
    )


def test_readme_links_the_full_config_reference():
    assert "(docs/config.md)" in (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    "override, shown, valid",
    [
        ("model.head.dropout=1.5", "1.5", "[0, 1)"),
        ("train.optimizer.lr=-1", "-1.0", ">= 0"),
        ("augment.hflip=2", "2.0", "[0, 1]"),
        ("preprocess.crop=0", "0", "[1, 4096]"),
        ("augment.scale=[1.0,0.5]", "[1.0, 0.5]", "2 values in (0, 1], min <= max"),
        ("augment.ratio=[0.5]", "[0.5]", "2 values in > 0, min <= max"),
        ("data.num_workers=-1", "-1", "auto or >= 0"),
        ("data.max_bad_fraction=1.5", "1.5", "[0, 1]"),
        ("preprocess.mean=[0.5,0.5]", "[0.5, 0.5]", "3 values in [0, 1]"),
        ("preprocess.std=[0.2,0,0.2]", "[0.2, 0.0, 0.2]", "3 values in (0, 1]"),
        ("train.optimizer.lr=.nan", "NaN", ">= 0"),
        ("train.epochs=0", "0", ">= 1"),
        ("model.freeze=-2", "-2", "backbone, none or >= 0"),
        ("model.head.hidden=[64,0]", "[64, 0]", ">= 1"),
        ("run.seed=4294967296", "4294967296", "[0, 2147483647]"),
        ("train.ema_decay=1", "1.0", "[0, 1)"),
        ("augment.mixup_alpha=-0.2", "-0.2", ">= 0"),
        ("data.balance='even'", "'even'", "none, sampler, loss"),
        (
            "train.best_metric=valid_f1",
            "'valid_f1' (did you mean 'valid_macro_f1'?)",
            "valid_acc, valid_macro_f1, valid_loss",
        ),
    ],
)
def test_out_of_range_value_names_key_value_and_valid_range(override, shown, valid):
    key = override.split("=")[0]
    with pytest.raises(UserError) as exc:
        load_config(None, [override])
    assert str(exc.value) == f"config key '{key}': invalid value {shown}; valid: {valid}"


def _leaves(cls: type, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp, f


def _is_numeric(tp) -> bool:
    if tp in (int, float):
        return True
    return any(_is_numeric(a) for a in typing.get_args(tp))  # Optional[int], Union[str, int], list[float]


def test_every_numeric_key_declares_a_range_its_default_satisfies():
    numeric = [(key, f) for key, tp, f in _leaves(Config) if _is_numeric(tp)]
    assert len(numeric) > 25
    missing = [key for key, f in numeric if f.metadata.get("range") is None]
    assert not missing, f"numeric config keys without a declared range: {missing}"
    defaults = Config()
    for key, f in numeric:
        value = defaults
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None:
            check_value(key, value, f.metadata)  # raises if a default is outside its own range


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["preprocess.crop=64", "augment.size=48"], "'augment.size' .48. must be >= 'preprocess.crop' .64."),
        (
            ["train.scheduler.name=cosine", "train.scheduler.min_lr=0.1", "train.optimizer.lr=0.01"],
            "'train.scheduler.min_lr' .0.1. must be <= 'train.optimizer.lr'",
        ),
    ],
)
def test_cross_key_rules_are_one_line(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(None, overrides)


def test_boundaries_that_are_valid_load():
    cfg = load_config(
        None,
        [
            "model.head.dropout=0",
            "augment.hflip=1",
            "augment.scale=[1,1]",
            "data.num_workers=0",
            "data.max_bad_fraction=1",
            "preprocess.crop=64",
            "augment.size=64",
            "model.freeze=0",
        ],
    )
    assert cfg.augment.scale == [1.0, 1.0] and cfg.data.num_workers == 0 and cfg.model.freeze == 0


def test_num_workers_auto_uses_this_process_share_of_usable_cpus(monkeypatch):
    monkeypatch.setattr(workers, "usable_cpus", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert load_config(None).data.num_workers == 2
    monkeypatch.setattr(workers, "usable_cpus", lambda: 64)
    assert load_config(None).data.num_workers == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert load_config(None).data.num_workers == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "128")
    assert load_config(None).data.num_workers == 0
    assert load_config(None, ["data.num_workers=6"]).data.num_workers == 6  # an explicit number stays


def test_terminal_reference_groups_by_section_and_fits_the_width():
    text = reference_text(width=60)
    assert text.startswith("run: ") and "\ntrain: optimization\n" in text
    assert "  model.head.dropout = 0.0    valid: [0, 1)" in text
    assert all(len(line) <= 60 for line in text.splitlines() if line.startswith("      "))


def test_exponent_without_a_dot_is_a_float_in_overrides_and_files(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a learning rate written that way must still work."""
    assert load_config(None, ["train.optimizer.lr=1e-3"]).train.optimizer.lr == 1e-3
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  optimizer:\n    lr: 5e-4\n")
    assert load_config(p).train.optimizer.lr == 5e-4
    with pytest.raises(UserError, match="expected float"):
        load_config(None, ["train.optimizer.lr=fast"])
    with pytest.raises(UserError, match="expected int"):
        load_config(None, ["train.epochs=1e3"])
