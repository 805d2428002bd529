"""data.balance: the class-balanced sampler (even, seeded, exact on resume, sharded), loss weights, the
imbalance note, and the rule that keeps a one-image batch away from BatchNorm."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from accelerate import skip_first_batches
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, DataLoader

from train.balance import (
    REPEAT_SHIFT,
    BalancedSampler,
    class_weights,
    drop_last_batch,
    imbalance_note,
)
from train.data import EpochSampler, train_sampler

# 3 classes: 60, 6 and 6 images (10×)
LABELS = [0] * 60 + [1] * 6 + [2] * 6


def _indices(sampler) -> list[int]:
    return [i for _, i in sampler]


def test_the_balanced_sampler_draws_each_class_about_evenly_with_replacement():
    sampler = BalancedSampler(LABELS * 20, seed=0)  # 1440 draws an epoch
    drawn = _indices(sampler)
    per_class = Counter((LABELS * 20)[i] for i in drawn)
    assert len(drawn) == len(LABELS) * 20
    assert all(abs(per_class[c] / len(drawn) - 1 / 3) < 0.05 for c in range(3))
    assert len(set(drawn)) < len(drawn)  # with replacement: minority images repeat


def test_the_balanced_order_is_fixed_by_seed_and_epoch_and_new_each_epoch():
    a, b, c = BalancedSampler(LABELS, 7), BalancedSampler(LABELS, 7), BalancedSampler(LABELS, 8)
    assert _indices(a) == _indices(b) != _indices(c)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first


def test_a_repeated_draw_gets_its_own_augmentation_key_and_the_first_keeps_the_epoch():
    sampler = BalancedSampler(LABELS, 3)
    sampler.set_epoch(5)
    keys = list(sampler)
    assert len(set(keys)) == len(keys)  # no two draws share an augmentation
    firsts = {}
    for key, i in keys:
        firsts.setdefault(i, key)
    assert set(firsts.values()) == {5}
    assert all(key & ((1 << REPEAT_SHIFT) - 1) == 5 for key, _ in keys)


def test_data_balance_chooses_the_sampler():
    assert isinstance(train_sampler("sampler", LABELS, 0), BalancedSampler)
    assert isinstance(train_sampler("none", LABELS, 0), EpochSampler)
    assert isinstance(train_sampler("loss", LABELS, 0), EpochSampler)


@pytest.mark.parametrize("n_labels", [72, 71])  # 72: no padding; 71: the last batches are padded
def test_two_ranks_draw_the_epochs_indices_between_them_without_overlap(n_labels):
    labels = LABELS[:n_labels]
    sampler = BalancedSampler(labels, 11)
    sampler.set_epoch(2)
    epoch = _indices(sampler)
    batch = 6
    shards = [
        [i for b in BatchSamplerShard(BatchSampler(sampler, batch, False), 2, rank) for _, i in b]
        for rank in range(2)
    ]
    assert len(shards[0]) == len(shards[1])  # no rank waits at the last step
    together = Counter(shards[0]) + Counter(shards[1])
    padding = -len(epoch) % (2 * batch)
    assert together - Counter(epoch) == Counter(epoch[:padding])  # only Accelerate's padding repeats
    assert Counter(epoch) - together == Counter()  # every draw lands on a rank
    # positions, not values: rank r takes the r-th batch of every pair of batches
    pos = [epoch[k : k + batch] for k in range(0, len(epoch), batch)]
    assert shards[0][:batch] == pos[0] and shards[1][:batch] == pos[1]


def test_resume_skipping_batches_sees_exactly_the_rest_of_the_epoch():
    class Keys(list):
        def __getitem__(self, key):
            return key

    def loader():
        sampler = BalancedSampler(LABELS, 4)
        sampler.set_epoch(1)
        return DataLoader(Keys(), batch_size=5, sampler=sampler, collate_fn=list)

    full = list(loader())
    assert list(skip_first_batches(loader(), 3)) == full[3:]


def test_class_weights_make_every_class_weigh_the_same_in_total():
    w = class_weights(LABELS, 3)
    totals = torch.tensor([60, 6, 6]) * w
    assert torch.allclose(totals, totals[0].expand(3))
    assert torch.allclose((torch.tensor(LABELS).bincount() * w).sum(), torch.tensor(72.0))
    assert class_weights([0, 0, 2], 3)[1] == 0  # a class with no training image


def test_the_imbalance_note_names_the_classes_the_ratio_and_data_balance():
    note = imbalance_note(LABELS, ["cat", "dog", "fox"], "none")
    assert note is not None and "'cat' has 60 images" in note and "(10.0×)" in note
    assert "data.balance=sampler" in note and "data.balance=loss" in note
    assert "data.balance=loss evens" in imbalance_note(LABELS, ["a", "b", "c"], "loss")
    assert imbalance_note([0] * 24 + [1] * 5, ["a", "b"], "none") is None  # 4.8×: under 5×
    assert imbalance_note([0] * 25 + [1] * 5, ["a", "b"], "none") is not None


@pytest.mark.parametrize(
    "n, batch, processes, compile, drop",
    [
        (25, 8, 1, False, True),  # 3 full batches and one image: dropped
        (24, 8, 1, False, False),  # even
        (26, 8, 1, False, False),  # a last batch of two is fine
        (25, 8, 2, False, False),  # Accelerate fills every rank's last batch with repeats
        (1, 8, 1, False, False),  # nothing would remain
        (26, 8, 1, True, True),  # compiled: any partial batch
        (15, 8, 2, True, False),  # compiled, but not one full global batch
    ],
)
def test_a_last_batch_of_one_image_is_dropped(n, batch, processes, compile, drop):
    assert drop_last_batch(n, batch, processes, compile) is drop


def test_both_feeds_build_their_training_loader_on_the_balanced_sampler(small_root):
    from core.config import load_config
    from tests.train.helpers import DEMO_RECIPE, TINY
    from train.data import load_data
    from train.feed import CpuFeed, GpuFeed

    cfg = load_config(DEMO_RECIPE, [f"data.root={small_root}", *TINY, "data.balance=sampler"])
    data = load_data(cfg)
    for feed_type in (CpuFeed, GpuFeed):
        train, _ = feed_type(cfg, data, torch.device("cpu")).loaders(4, 4, pin=False)
        assert isinstance(train.sampler, BalancedSampler)
        assert train.sampler.members[1].tolist() == [
            i for i, y in enumerate(data.train.source.labels) if y == 1
        ]
