"""The training loss (smoothing, class weights, mixed labels) and MixUp/CutMix on batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.data import IGNORE_LABEL
from train.targets import BatchMixer, TrainLoss, dominant_label

C = 4


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, C, generator=g), torch.tensor([0, 1, 2, 3, 1, 0])


def test_hard_labels_with_smoothing_match_torch_cross_entropy(batch):
    logits, y = batch
    assert torch.allclose(TrainLoss(0.1)(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))


def test_class_weights_without_smoothing_match_torch_weighted_cross_entropy(batch):
    logits, y = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert torch.allclose(TrainLoss(0.0, w)(logits, y), F.cross_entropy(logits, y, weight=w))


def test_class_weights_with_smoothing_weigh_each_image_by_its_label(batch):
    logits, y = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    per_image = F.cross_entropy(logits, y, label_smoothing=0.2, reduction="none")
    expected = (w[y] * per_image).sum() / w[y].sum()
    assert torch.allclose(TrainLoss(0.2, w)(logits, y), expected)
    # torch's own weight+smoothing reweights the smoothing mass per class: a different (rejected) loss
    assert not torch.allclose(expected, F.cross_entropy(logits, y, weight=w, label_smoothing=0.2))


def test_masked_slots_count_for_nothing(batch):
    logits, y = batch
    masked = y.clone()
    masked[2] = IGNORE_LABEL
    keep = masked != IGNORE_LABEL
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert torch.allclose(TrainLoss(0.1, w)(logits, masked), TrainLoss(0.1, w)(logits[keep], y[keep]))


def test_mixed_labels_smoothed_in_the_loss_equal_timms_smooth_then_mix(batch):
    from timm.data.mixup import mixup_target

    logits, y = batch
    lam, s = 0.7, 0.1
    mixed = lam * F.one_hot(y, C).float() + (1 - lam) * F.one_hot(y.flip(0), C).float()
    timm_target = mixup_target(y, C, lam=lam, smoothing=s)  # smooths each one-hot, then mixes with flip(0)
    expected = torch.sum(-timm_target * F.log_softmax(logits, dim=1), dim=1).mean()  # timm's SoftTargetCE
    assert torch.allclose(TrainLoss(s)(logits, mixed), expected)


def test_a_mixed_image_weighs_the_mix_of_its_labels_weights(batch):
    logits, y = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    lam, other = 0.7, y.flip(0)
    mixed = lam * F.one_hot(y, C).float() + (1 - lam) * F.one_hot(other, C).float()
    weight = lam * w[y] + (1 - lam) * w[other]
    per_image = -(mixed * F.log_softmax(logits, dim=1)).sum(1)
    assert torch.allclose(TrainLoss(0.0, w)(logits, mixed), (weight * per_image).sum() / weight.sum())


def _images():
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_is_a_function_of_the_seed_and_yields_soft_labels(mixup, cutmix):
    mixer = BatchMixer(C, mixup, cutmix)
    x, y = _images(), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    torch.manual_seed(5)
    a = mixer(x, y)
    torch.manual_seed(5)
    b = mixer(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (8, C) and torch.allclose(a[1].sum(1), torch.ones(8))
    assert not torch.equal(a[0], x)


def test_masked_slots_leave_the_batch_before_mixing():
    x, y = _images(), torch.tensor([0, 1, IGNORE_LABEL, 3, 0, 1, 2, 3])
    images, target = BatchMixer(C, 0.2, 0.0)(x, y, masked=True)
    assert images.shape[0] == target.shape[0] == 7


def test_mixing_off_passes_the_batch_through():
    mixer = BatchMixer(C, 0.0, 0.0)
    x, y = _images(), torch.arange(8) % C
    assert not mixer.enabled and mixer(x, y) == (x, y)


def test_train_accuracy_counts_the_dominant_label():
    soft = torch.tensor([[0.3, 0.7, 0, 0], [0.6, 0, 0.4, 0]])
    assert dominant_label(soft).tolist() == [1, 0]
    assert dominant_label(torch.tensor([2, 3])).tolist() == [2, 3]
