"""Class imbalance (data.balance): the class-balanced epoch sampler, loss weights from the training counts, and
the start-of-run note when the largest class outnumbers the smallest by IMBALANCE_RATIO or more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

IMBALANCE_RATIO = 5
# A repeated draw of one image within an epoch needs its own augmentation: its key's epoch part carries the
# repeat number above these bits (both augmentation paths hash the key; the GPU path keeps its low 32 bits).
REPEAT_SHIFT = 16


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()


def class_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """n / (classes × count): a class's images weigh what they would if every class had n / classes images
    (scikit-learn's 'balanced'); a class with no training image gets weight 0 (it is never a target)."""
    counts = torch.tensor(class_counts(labels, num_classes), dtype=torch.float32)
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights


def imbalance_note(labels: Sequence[int], classes: Sequence[str], balance: str) -> str | None:
    """One line when the largest training class has >= IMBALANCE_RATIO × the smallest's images, else None."""
    counts = class_counts(labels, len(classes))
    present = [(n, c) for n, c in zip(counts, classes, strict=True) if n > 0]
    if not present:
        return None
    (lo, lo_name), (hi, hi_name) = min(present), max(present)
    if hi < IMBALANCE_RATIO * lo:
        return None
    advice = (
        "data.balance=sampler (even classes per epoch) or data.balance=loss (weighted loss) evens them out"
        if balance == "none"
        else f"data.balance={balance} evens them out"
    )
    return f"imbalanced training classes: {hi_name!r} has {hi} images, {lo_name!r} {lo} ({hi / lo:.1f}×); {advice}"


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 2]).generate_state(1)[0]))


class BalancedSampler(Sampler):
    """Yields len(labels) (key, index) draws an epoch: a class uniformly, then one of its images uniformly,
    with replacement. A pure function of (seed, epoch), the same on every process (Accelerate shards the
    batches as it does EpochSampler's), so a resume that skips the first batches lands exactly."""

    def __init__(self, labels: Sequence[int], seed: int):
        self.n, self.seed, self.epoch = len(labels), seed, 0
        by_class: dict[int, list[int]] = {}
        for i, y in enumerate(labels):
            by_class.setdefault(int(y), []).append(i)
        self.members = [torch.tensor(v) for _, v in sorted(by_class.items())]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        g = _generator(self.seed, self.epoch)
        sizes = torch.tensor([len(m) for m in self.members])
        cls = torch.randint(len(self.members), (self.n,), generator=g)
        pick = (torch.rand(self.n, generator=g, dtype=torch.float64) * sizes[cls]).long()
        pick = torch.minimum(pick, sizes[cls] - 1)  # float rounding at the top edge
        return [int(self.members[c][k]) for c, k in zip(cls.tolist(), pick.tolist(), strict=True)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seen: dict[int, int] = {}
        keys = []
        for i in self.order():
            repeat = seen.get(i, 0)
            seen[i] = repeat + 1
            keys.append((self.epoch | (repeat << REPEAT_SHIFT), i))
        return iter(keys)

    def __len__(self) -> int:
        return self.n


def drop_last_batch(n: int, batch_size: int, processes: int, compile: bool) -> bool:
    """Whether the training loader drops its partial last batch.

    Compiled: always when there is a full batch (a new shape would recompile). Otherwise only when one
    process's last batch would hold a single image, which BatchNorm cannot normalise in training ("Expected
    more than 1 value per channel"). Over several processes Accelerate completes the last batches with
    repeats, so every per-process batch is full; alone, the sampler's last batch is n % batch_size. A
    dropped image is seen in other epochs (each epoch's order is new).
    """
    if compile:
        return n >= batch_size * processes
    return processes == 1 and n > batch_size and n % batch_size == 1
