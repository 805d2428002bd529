"""Training targets: MixUp/CutMix on batches and the training loss (label smoothing, class weights) that reads
hard or mixed labels.

Smoothing and mixing: timm smooths each one-hot label, then mixes the pair (`mixup_target`). Smoothing is
affine (q = (1 - s)·t + s/C) and mixing is a convex combination, so mixing one-hot labels first and smoothing
the mix gives the same target exactly; we mix with torchvision's v2 MixUp/CutMix and smooth in the loss.

Class weights (data.balance=loss) weigh each image by its label's weight (a mixed image: by the mix of its two
labels' weights), and the batch loss is the weighted mean, as torch's weighted cross-entropy does for hard
labels. torch's own `weight` with `label_smoothing` also reweights the smoothing mass class by class, which
would push every prediction toward the rare classes; weighing whole images is what resampling would do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.data import IGNORE_LABEL


class TrainLoss(nn.Module):
    """Cross-entropy on hard labels (IGNORE_LABEL slots masked) or on soft [N, C] labels."""

    def __init__(self, label_smoothing: float = 0.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        classes = logits.shape[1]
        if target.dim() == 1:
            valid = target != IGNORE_LABEL
            soft = F.one_hot(target.clamp(min=0), classes).float() * valid[:, None]
        else:
            soft = target.float()
        smooth = soft * (1 - self.smoothing) + soft.sum(1, keepdim=True) * self.smoothing / classes
        per_image = -(smooth * F.log_softmax(logits, dim=1)).sum(1)
        # an image's weight: its label's (mixed: the mix of its labels'); 0 for a masked slot
        w = soft.sum(1) if self.weight is None else soft @ self.weight.to(soft.dtype)
        return (w * per_image).sum() / w.sum().clamp_min(1e-12)


def dominant_label(target: torch.Tensor) -> torch.Tensor:
    """The label a (possibly mixed) target mostly is: train accuracy counts hits against it."""
    return target if target.dim() == 1 else target.argmax(dim=1)


class BatchMixer:
    """MixUp and/or CutMix (one of them per batch when both are on) on a normalized float batch.

    Draws come from torch's global RNG, which the trainer reseeds before every step: exact on resume.
    Masked slots (unreadable images) leave the batch first, so a bad file's zeros are never mixed in.
    """

    def __init__(self, num_classes: int, mixup_alpha: float, cutmix_alpha: float):
        from torchvision.transforms import v2

        ops = []
        if mixup_alpha > 0:
            ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.op = (ops[0] if len(ops) == 1 else v2.RandomChoice(ops)) if ops else None

    @property
    def enabled(self) -> bool:
        return self.op is not None

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, masked: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`masked`: the batch holds IGNORE_LABEL slots (the caller knows from its bad-file notes, so no
        device sync is needed to find out)."""
        if self.op is None:
            return images, labels
        if masked:
            keep = labels != IGNORE_LABEL
            images, labels = images[keep], labels[keep]
        return self.op(images, labels)
