"""Hostile input, round 2 (issue 19), training side: thin images in valid/test are skipped and counted
apart (M1), deep class folders (M6), and class names holding the top-k separator (M11)."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from core.errors import UserError
from core.images import TOO_ELONGATED
from core.preprocess import EvalSpec, eval_transform
from tests.serve.helpers import save_picture


def test_m1_a_thin_valid_image_is_skipped_not_a_crash(tmp_path):
    from train.data import FolderSource, ImageDataset, collate_eval

    save_picture(tmp_path / "a.png")
    Image.new("RGB", (2, 100_000), (1, 2, 3)).save(tmp_path / "thin.png")
    ds = ImageDataset(
        FolderSource([(str(tmp_path / "a.png"), 0), (str(tmp_path / "thin.png"), 1)]),
        eval_transform(EvalSpec(resize=37, crop=32)),
    )
    images, labels, bad = collate_eval([ds[0], ds[1]])
    assert images.shape == (2, 3, 32, 32) and labels[1].item() < 0
    assert len(bad) == 1 and TOO_ELONGATED in bad[0]


def test_m1_evaluation_warns_once_counting_thin_apart_from_undecodable(capsys):
    import torch
    from accelerate import Accelerator

    from train.data import IGNORE_LABEL
    from train.evaluate import evaluate

    batch = (
        torch.zeros(3, 3, 8, 8),
        torch.tensor([0, IGNORE_LABEL, IGNORE_LABEL]),
        [f"thin.png\t{TOO_ELONGATED} (2x100000)", "bad.png\tcorrupt or truncated image"],
    )
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    acc = Accelerator(cpu=True)
    for _ in range(2):  # two epochs over the same set: one warning
        evaluate(acc, model, [batch], torch.nn.Identity())
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "1 image(s) too elongated" in err and "1 undecodable" in err


def test_m1_thin_training_images_never_abort_a_run_and_are_counted_apart(
    tmp_path, train_inproc, small_root, capsys
):
    """Without augmentation the train transform is the eval resize, which refuses a thin image: skipped and
    counted apart from undecodable files, never toward data.max_bad_fraction (here 0)."""
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    Image.new("RGB", (2, 5000), (1, 2, 3)).save(root / "train" / "1" / "panorama.png")
    Image.new("RGB", (5000, 2), (3, 2, 1)).save(root / "train" / "2" / "banner.png")
    result = train_inproc(
        f"data.root={root}",
        "train.epochs=1",
        "model.arch=cifar_cnn",
        "augment.enabled=false",
        "data.max_bad_fraction=0",
        "run.name=thin",
    )
    assert result.exit_code == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "2 training image(s) were too elongated to resize" in warnings[0]
    assert "could not be decoded" not in warnings[0]


def test_m6_deep_class_folders_are_listed_without_recursion(tmp_path):
    from tests.serve.test_hostile_round2 import make_deep, remove_deep
    from train.data import list_samples

    make_deep(tmp_path / "train" / "cat", 1200)
    try:
        samples = list_samples(tmp_path / "train", ["cat"])
    finally:
        remove_deep(tmp_path / "train" / "cat")
    assert len(samples) == 1 and samples[0][0].endswith("/deep.png")


def test_m11_a_class_name_with_the_topk_separator_is_refused_at_training(tmp_path):
    from train.data import list_classes

    (tmp_path / "train" / "a|b").mkdir(parents=True)
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(UserError, match=r"contains '\|'"):
        list_classes(tmp_path / "train")
