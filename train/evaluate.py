"""Exact distributed evaluation: per-image results gathered with gather_for_metrics, summed once at the end.

Every image is counted exactly once whatever the number of processes: gather_for_metrics drops the
samples Accelerate repeats to even out the last batch, and unreadable images (label IGNORE_LABEL,
see train.data.collate_eval) are masked out of every metric.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from core.bundle import BundleRecord, load_bundle
from core.images import TOO_ELONGATED
from core.metrics import TOPK
from core.preprocess import WithPreprocessing
from train.data import IGNORE_LABEL, eval_loader


@dataclass
class EvalResult:
    n: int
    loss: float
    acc: float
    top5: float | None  # None with 5 classes or fewer: every class is then in the top 5, it would be 1.0
    probs: np.ndarray | None = None
    targets: np.ndarray | None = None
    indices: np.ndarray | None = None  # dataset index of each row of probs (unreadable images are dropped)
    macro_f1: float = 0.0  # F1 averaged over the classes that occur as label or prediction (scikit-learn's)
    logits: np.ndarray | None = None  # float32, rows as probs: what calibration fits a temperature on

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


def _class_counts(counts: torch.Tensor | None, labels: torch.Tensor, preds: torch.Tensor, classes: int):
    """Add to [3, C] (true positives, predictions, labels) per class; index_add_ keeps it on the device."""
    if counts is None:
        counts = torch.zeros(3, classes, dtype=torch.float64, device=labels.device)
    valid = (labels != IGNORE_LABEL).double()
    target = labels.clamp(min=0)
    counts[0].index_add_(0, target, valid * (preds == target).double())
    counts[1].index_add_(0, preds, valid)
    counts[2].index_add_(0, target, valid)
    return counts


def macro_f1(counts: np.ndarray) -> float:
    """counts: [3, C] (tp, predicted, true). Classes never labelled nor predicted do not count."""
    tp, predicted, true = counts
    present = (predicted + true) > 0
    if not present.any():
        return 0.0
    return float(np.mean(2 * tp[present] / (predicted[present] + true[present])))


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, loader, prepare: nn.Module, keep_probs: bool = False
) -> EvalResult:
    """Run `model(prepare(images))` over `loader`; with keep_probs, also return softmax probs and targets."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    logits_kept, targets, classes, counts = [], [], 0, None
    skipped = torch.zeros(2, dtype=torch.float64)  # too elongated to resize, undecodable
    for images, labels, bad in loader:
        elongated = sum(TOO_ELONGATED in note for note in bad)
        skipped += torch.tensor([elongated, len(bad) - elongated], dtype=torch.float64)
        with accelerator.autocast():
            logits = model(prepare(images)).float()
        classes = logits.shape[1]
        outputs = (_per_image(logits, labels), labels, logits.argmax(dim=1)) + (
            (logits,) if keep_probs else ()
        )
        gathered = accelerator.gather_for_metrics(outputs)
        totals += gathered[0].sum(dim=0).double()
        counts = _class_counts(counts, gathered[1], gathered[2], classes)
        if keep_probs:
            targets.append(gathered[1])
            logits_kept.append(gathered[3])
    loss_sum, hit1, hit5, n = totals.tolist()  # the one device sync of the whole evaluation
    _warn_skipped(accelerator, skipped, round(n))
    denom = max(n, 1.0)
    result = EvalResult(round(n), loss_sum / denom, hit1 / denom, hit5 / denom if classes > TOPK else None)
    if counts is not None:
        result.macro_f1 = macro_f1(counts.cpu().numpy())
    if keep_probs and targets:
        all_targets, all_logits = torch.cat(targets).cpu(), torch.cat(logits_kept).cpu()
        keep = all_targets != IGNORE_LABEL
        result.logits, result.targets = all_logits[keep].numpy(), all_targets[keep].numpy()
        result.probs = torch.softmax(all_logits[keep], dim=1).numpy()
        # The eval loader is unshuffled and gather_for_metrics keeps batch order, so a gathered row's
        # position is its dataset index.
        result.indices = keep.nonzero().flatten().numpy()
    return result


def evaluate_bundle(cfg, dataset, bundle_dir, accelerator: Accelerator) -> tuple[EvalResult, BundleRecord]:
    """The saved bundle (what ships, not the in-memory model) over `dataset`, logits and probs kept, and
    its record. Collective: every process calls it; the arrays are whole on every process."""
    model, record = load_bundle(bundle_dir)
    model = accelerator.prepare_model(WithPreprocessing(model, record.preprocess), evaluation_mode=True)
    batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
    loader = accelerator.prepare_data_loader(
        eval_loader(dataset, batch, cfg.data.num_workers, pin=accelerator.device.type == "cuda")
    )
    return evaluate(accelerator, model, loader, lambda x: x, keep_probs=True), record


_warned: set[tuple[int, int, int]] = set()


def _warn_skipped(accelerator: Accelerator, skipped: torch.Tensor, n: int) -> None:
    """One line per distinct evaluation set (not one per epoch): images left out of the metrics, the
    too-elongated ones (core.images.TooElongated) counted apart from undecodable files."""
    if accelerator.num_processes > 1:
        skipped = accelerator.reduce(skipped.to(accelerator.device), reduction="sum").cpu()
    elongated, undecodable = (round(x) for x in skipped.tolist())
    key = (elongated, undecodable, n)
    if not (elongated or undecodable) or key in _warned or not accelerator.is_main_process:
        return
    _warned.add(key)
    print(
        f"warning: {elongated} image(s) too elongated to resize and {undecodable} undecodable image(s) "
        f"left out of an evaluation of {n} images",
        file=sys.stderr,
        flush=True,
    )
