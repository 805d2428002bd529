"""Hostile input, round 2 (issue 19), training side: thin images in valid/test are skipped and counted
apart (M1), deep class folders (M6), and class names holding the top-k separator (M11)."""

from __future__ import annotations

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
