"""The timed part of train/bench.py: the model and its optimizer step, the clock around it (images/s and
the fraction spent waiting for data), and the batch-size search that halves until a step fits."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import UserError
from core.models import HeadSpec, backbone_frozen_eval, build_model, set_backbone_trainable

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------ training step


@dataclass
class Setup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build(
    arch: str, num_classes: int, freeze: bool, setup: Setup, compile_model: bool, channels_last: bool
) -> tuple[nn.Module, nn.Module]:
    """(module to call, underlying model). Frozen backbone: its parameters do not require grad, so no
    autograd graph is recorded through it and its BatchNorm layers stay in eval mode."""
    model = build_model(arch, num_classes, HeadSpec(), pretrained="none").to(setup.device).train()
    if freeze:
        set_backbone_trainable(model, False)
        backbone_frozen_eval(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return (torch.compile(model) if compile_model else model), model


def make_step(
    model: nn.Module, params: list[nn.Parameter], setup: Setup, sync_loss: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimizer step on normalized float images. The loss is summed on the device (no host sync)
    unless `sync_loss` (the tutorial's per-step `loss.item()`)."""
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    fp16 = setup.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    total = torch.zeros((), device=setup.device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        nonlocal total
        with torch.autocast(
            setup.device.type, dtype=setup.amp_dtype or torch.float32, enabled=setup.amp_dtype is not None
        ):
            loss = crit(model(images), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total = total + loss.detach().float()
        if sync_loss:
            loss.item()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    model: str
    path: str
    batch_size: int
    images_per_s: float
    data_wait: float  # fraction of the timed wall time spent waiting for the next batch


def measure(
    batches: Batches, step: Callable, warmup: int, steps: int, device: torch.device
) -> tuple[float, float]:
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start, waited, seen = time.perf_counter(), 0.0, 0
    for _ in range(steps):
        t = time.perf_counter()
        images, labels = next(batches)
        waited += time.perf_counter() - t
        step(images, labels)
        seen += len(labels)
    sync(device)
    elapsed = time.perf_counter() - start
    return seen / elapsed, waited / elapsed


# ------------------------------------------------------------------------------ batch size


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_batch_that_fits(try_batch: Callable[[int], None], start: int, minimum: int = 1) -> int:
    """Largest batch size, halving from `start`, for which `try_batch(n)` runs without running out of memory.

    `try_batch` should run two full training steps (the second allocates optimizer state). This is the
    search `train.batch_size: auto` can call with the real model and step.
    """
    n = start
    while n >= minimum:
        try:
            try_batch(n)
            return n
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n //= 2
    raise UserError(f"even a batch of {minimum} does not fit in device memory; use a smaller model or crop")
