"""Exact distributed evaluation: per-image results gathered with gather_for_metrics, summed once at the end.

Every image is counted exactly once whatever the number of processes: gather_for_metrics drops the
samples Accelerate repeats to even out the last batch, and unreadable images (label IGNORE_LABEL,
see train.data.collate_eval) are masked out of every metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from core.report import TOPK
from train.data import IGNORE_LABEL


@dataclass
class EvalResult:
    n: int
    loss: float
    acc: float
    top5: float | None  # None with 5 classes or fewer: every class is then in the top 5, it would be 1.0
    probs: np.ndarray | None = None
    targets: np.ndarray | None = None
    indices: np.ndarray | None = None  # dataset index of each row of probs (unreadable images are dropped)
    logits: np.ndarray | None = None  # float32, rows as probs: what calibration fits a temperature on

    def as_metrics(self, prefix: str) -> dict[str, float | int]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_acc": self.acc,
            **self.top5_metric(prefix),
            f"{prefix}_n": self.n,
        }

    def top5_metric(self, prefix: str) -> dict[str, float]:
        """{prefix_top5: value}, or {} where top-5 means nothing (5 classes or fewer)."""
        return {} if self.top5 is None else {f"{prefix}_top5": self.top5}


def _per_image(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, 4]: loss, top-1 hit, top-5 hit, counted (0 for unreadable images)."""
    logits = logits.float()
    valid = labels != IGNORE_LABEL
    target = labels.clamp(min=0)
    loss = F.cross_entropy(logits, target, reduction="none")
    top = logits.topk(min(TOPK, logits.shape[1]), dim=1).indices
    hit1 = top[:, 0] == target
    hit5 = (top == target[:, None]).any(dim=1)
    return torch.stack([loss, hit1.float(), hit5.float(), valid.float()], dim=1) * valid[:, None].float()


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, loader, prepare: nn.Module, keep_probs: bool = False
) -> EvalResult:
    """Run `model(prepare(images))` over `loader`; with keep_probs, also return softmax probs and targets."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    logits_kept, targets, classes = [], [], 0
    for images, labels, _bad in loader:
        with accelerator.autocast():
            logits = model(prepare(images)).float()
        classes = logits.shape[1]
        outputs = (_per_image(logits, labels), labels) + ((logits,) if keep_probs else ())
        gathered = accelerator.gather_for_metrics(outputs)
        totals += gathered[0].sum(dim=0).double()
        if keep_probs:
            targets.append(gathered[1])
            logits_kept.append(gathered[2])
    loss_sum, hit1, hit5, n = totals.tolist()  # the one device sync of the whole evaluation
    denom = max(n, 1.0)
    result = EvalResult(round(n), loss_sum / denom, hit1 / denom, hit5 / denom if classes > TOPK else None)
    if keep_probs and targets:
        all_targets, all_logits = torch.cat(targets).cpu(), torch.cat(logits_kept).cpu()
        keep = all_targets != IGNORE_LABEL
        result.logits, result.targets = all_logits[keep].numpy(), all_targets[keep].numpy()
        result.probs = torch.softmax(all_logits[keep], dim=1).numpy()
        # The eval loader is unshuffled and gather_for_metrics keeps batch order, so a gathered row's
        # position is its dataset index.
        result.indices = keep.nonzero().flatten().numpy()
    return result
