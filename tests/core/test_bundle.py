"""The bundle rebuilds the exact model from its folder alone and refuses what it cannot read."""

import json

import pytest
import torch

from core.bundle import BundleRecord, load_bundle, load_display_names, read_record, save_bundle
from core.errors import UserError
from core.models import HeadSpec, build_model
from core.preprocess import EvalSpec


def _record(**kw):
    base = dict(
        arch="cifar_cnn",
        classes=["1", "10", "2"],
        preprocess=EvalSpec(36, 32, mean=(0.5,) * 3, std=(0.5,) * 3),
        display_names=["pink primrose", "globe thistle", "hard-leaved pocket orchid"],
        head=HeadSpec([16], 0.3),
        metrics={"valid_acc": 0.9, "epoch": 3},
        lineage={"config_hash": "abc", "dataset": {"num_files": {"train": 3}}},
    )
    base.update(kw)
    return BundleRecord(**base)


def test_load_bundle_reproduces_logits_and_record_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_model("cifar_cnn", 3, HeadSpec([16], 0.3)).eval()
    save_bundle(tmp_path / "best", model, _record())
    loaded, record = load_bundle(tmp_path / "best")
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert record.classes == ["1", "10", "2"]
    assert record.display_names[1] == "globe thistle"
    assert record.preprocess == _record().preprocess
    assert record.metrics["epoch"] == 3 and record.head_path == "fc3"


def test_bundle_json_is_readable_by_a_person(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    d = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert d["format"] == "imgclf-bundle" and d["schema_version"] == 1 and d["num_classes"] == 3
    assert d["preprocess"] == {
        "resize": 36,
        "crop": 32,
        "interpolation": "bilinear",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }


def test_saving_again_replaces_the_bundle_whole(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record(metrics={"v": 2}))
    assert read_record(tmp_path / "b").metrics == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or .old leftovers


def test_newer_schema_is_refused_with_upgrade_hint(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    p = tmp_path / "b" / "bundle.json"
    d = json.loads(p.read_text())
    d["schema_version"] = 99
    p.write_text(json.dumps(d))
    with pytest.raises(UserError, match="schema v99.*upgrade"):
        load_bundle(tmp_path / "b")


def test_corrupt_weights_are_a_user_error(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt"):
        load_bundle(tmp_path / "b")


def test_weights_from_another_architecture_are_refused(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 5), _record(head=HeadSpec()))
    with pytest.raises(UserError, match="does not match its record"):
        load_bundle(tmp_path / "b")


def test_a_run_folder_is_not_a_bundle_but_the_error_points_at_best(tmp_path):
    save_bundle(tmp_path / "run" / "best", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    with pytest.raises(UserError, match="did you mean .*best"):
        load_bundle(tmp_path / "run")
    with pytest.raises(UserError, match="not found"):
        load_bundle(tmp_path / "missing")


def test_display_names_come_from_cat_to_name_with_folder_fallback(tmp_path):
    p = tmp_path / "cat_to_name.json"
    p.write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}))
    assert load_display_names(["1", "10", "2"], p) == ["pink primrose", "10", "hard-leaved pocket orchid"]
    assert load_display_names(["a"], None) == ["a"]


def test_bundle_files_are_readable_by_others_like_any_plain_file(tmp_path):
    save_bundle(tmp_path / "b", build_model("cifar_cnn", 3, HeadSpec([16], 0.3)), _record())
    for name in ("model.safetensors", "bundle.json"):
        assert (tmp_path / "b" / name).stat().st_mode & 0o044 == 0o044, name
