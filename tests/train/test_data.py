"""Image-folder discovery and the deterministic, worker-independent data pipeline."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from core.config import load_config
from core.demo_data import make_demo_dataset
from core.errors import UserError
from train.data import (
    EpochSampler,
    collate_eval,
    collate_train,
    fingerprint,
    list_classes,
    load_folder_data,
)


def test_class_folders_sort_as_strings_like_imagefolder(tmp_path):
    for name in ("2", "10", "1", "101", "11"):
        (tmp_path / name).mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    assert list_classes(tmp_path) == ["1", "10", "101", "11", "2"]


@pytest.mark.parametrize("name", ["val", "validation"])
def test_validation_folder_aliases_are_accepted(tmp_path, name):
    root = make_demo_dataset(tmp_path, num_classes=2, per_split={"train": 1, "valid": 2}, size=24)
    (root / "valid").rename(root / name)
    data = load_folder_data(load_config(None, [f"data.root={root}"]))
    assert len(data.valid) == 4 and data.lineage["valid_dir"] == str((root / name).resolve())


def test_a_validation_class_unknown_to_train_is_refused(tmp_path):
    root = make_demo_dataset(tmp_path, num_classes=2, per_split={"train": 1, "valid": 1}, size=24)
    (root / "valid" / "2").rename(root / "valid" / "7")
    with pytest.raises(UserError, match="train/ lacks: 7"):
        load_folder_data(load_config(None, [f"data.root={root}"]))


def test_augmentation_depends_on_seed_epoch_and_index_not_on_workers(tmp_path):
    root = make_demo_dataset(tmp_path, num_classes=2, per_split={"train": 4, "valid": 1}, size=32)
    cfg = load_config(
        None, [f"data.root={root}", "preprocess.resize=28", "preprocess.crop=24", "augment.rotation=20"]
    )
    ds = load_folder_data(cfg).train

    def epoch_images(workers: int, epoch: int) -> torch.Tensor:
        sampler = EpochSampler(len(ds), seed=0)
        sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=3, sampler=sampler, num_workers=workers, collate_fn=collate_train)
        return torch.cat([images for images, _, _ in loader])

    torch.manual_seed(999)  # the caller's RNG state must not matter either
    first = epoch_images(0, epoch=1)
    assert torch.equal(first, epoch_images(2, epoch=1))
    assert not torch.equal(first, epoch_images(0, epoch=2))


def test_epoch_sampler_order_is_a_permutation_fixed_by_seed_and_epoch():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(i for _, i in a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b) and all(e == 2 for e, _ in b)


def test_train_collate_keeps_a_masked_slot_for_unreadable_images_and_reports_them():
    """A static batch shape: a dropped row would recompile a torch.compile'd model."""
    x = torch.ones(3, 4, 4, dtype=torch.uint8)
    images, labels, bad = collate_train([(x, 0, ""), (None, 1, "a.jpg\tcorrupt"), (x + 1, 2, "")])
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [0, -1, 2] and bad == ["a.jpg\tcorrupt"]
    assert images[1].eq(0).all()
    images, labels, bad = collate_train([(None, 1, "a.jpg\tcorrupt")])
    assert len(images) == 0 and len(labels) == 0 and bad == ["a.jpg\tcorrupt"]


def test_eval_collate_keeps_batch_size_and_masks_unreadable_images():
    x = torch.ones(3, 4, 4, dtype=torch.uint8)
    images, labels, bad = collate_eval([(None, 1, "b.png\tempty"), (x, 2, "")])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [-1, 2] and bad == ["b.png\tempty"]
    assert images[0].sum() == 0


def test_dataset_fingerprint_changes_with_classes_and_counts():
    base = fingerprint(["1", "2"], {"train": 4, "valid": 2, "test": 0})
    assert base == fingerprint(["1", "2"], {"train": 4, "valid": 2, "test": 0})
    assert base != fingerprint(["1", "3"], {"train": 4, "valid": 2, "test": 0})
    assert base != fingerprint(["1", "2"], {"train": 5, "valid": 2, "test": 0})


def test_images_inside_hidden_subfolders_of_a_class_are_not_training_images(tmp_path):
    root = make_demo_dataset(tmp_path, num_classes=2, per_split={"train": 2, "valid": 1}, size=24)
    hidden = root / "train" / "1" / ".ipynb_checkpoints"
    hidden.mkdir()
    first = sorted((root / "train" / "1").glob("*.jpg"))[0]
    (hidden / "copy-checkpoint.jpg").write_bytes(first.read_bytes())
    data = load_folder_data(load_config(None, [f"data.root={root}"]))
    assert len(data.train) == 4 and not any(".ipynb" in p for p in data.train.source.paths)
