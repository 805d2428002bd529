"""Optimizers and learning-rate schedules by name; schedules count optimizer steps, not epochs.

Every schedule steps once per optimizer step, so a resume in the middle of an epoch lands on the
exact learning rate. Step counts are single-process numbers: Accelerate's scheduler wrapper steps
num_processes times per call, which keeps the shape of the schedule whatever the process count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from core.config import OptimizerConfig, SchedulerConfig
from core.errors import UserError

OPTIMIZERS: dict[str, Callable[[Iterable, OptimizerConfig], Optimizer]] = {
    "sgd": lambda p, c: torch.optim.SGD(
        p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov and c.momentum > 0
    ),
    "adam": lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda p, c: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay),
    "adadelta": lambda p, c: torch.optim.Adadelta(p, lr=c.lr, weight_decay=c.weight_decay),
}


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    """All parameters go in: frozen ones have no gradient and are skipped, and unfreezing later needs no rebuild."""
    try:
        make = OPTIMIZERS[cfg.name]
    except KeyError:
        raise UserError(
            f"unknown train.optimizer.name {cfg.name!r}; valid: {', '.join(OPTIMIZERS)}"
        ) from None
    return make(params, cfg)


def _constant(opt: Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int) -> LRScheduler:
    return LambdaLR(opt, lambda step: 1.0)


def _step(opt: Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int) -> LRScheduler:
    every = max(1, cfg.step_size * steps_per_epoch)
    return LambdaLR(opt, lambda step: cfg.gamma ** (step // every))


def _cosine(opt: Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int) -> LRScheduler:
    total = max(1, epochs * steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    base = opt.param_groups[0]["lr"]
    floor = cfg.min_lr / base if base > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(opt, factor)


def _onecycle(opt: Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int) -> LRScheduler:
    max_lr = [g["lr"] for g in opt.param_groups]
    cycle_momentum = "momentum" in opt.defaults or "betas" in opt.defaults
    return OneCycleLR(
        opt,
        max_lr=max_lr,
        total_steps=max(2, epochs * steps_per_epoch),
        cycle_momentum=cycle_momentum and opt.defaults.get("momentum", 1) != 0,
    )


SCHEDULERS: dict[str, Callable[[Optimizer, SchedulerConfig, int, int], LRScheduler]] = {
    "none": _constant,
    "step": _step,
    "cosine": _cosine,
    "onecycle": _onecycle,
}


def build_scheduler(opt: Optimizer, cfg: SchedulerConfig, steps_per_epoch: int, epochs: int) -> LRScheduler:
    try:
        make = SCHEDULERS[cfg.name]
    except KeyError:
        raise UserError(
            f"unknown train.scheduler.name {cfg.name!r}; valid: {', '.join(SCHEDULERS)}"
        ) from None
    return make(opt, cfg, steps_per_epoch, epochs)
