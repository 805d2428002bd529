"""A short speed check of every format on the same images: batch-1 latency and best images/s, median of reps.

Each batch size is warmed up (first calls pay for kernel selection and thread-pool start-up, which made
a tiny CNN look 80 ms slow at batch 1), then the formats take turns call by call, so a machine whose
load drifts during the check slows them all alike and the ratios between them stay fair.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

Runner = Callable[[torch.Tensor], torch.Tensor]
WARMUP_CALLS, WARMUP_S = 3, 0.05
MIN_REPS = 5


def _warm_up(run: Runner, x: torch.Tensor) -> None:
    start, calls = time.perf_counter(), 0
    while calls < WARMUP_CALLS or time.perf_counter() - start < WARMUP_S:
        run(x)
        calls += 1


def _timed_round_robin(
    runners: dict[str, Runner], x: torch.Tensor, budget_s: float, max_reps: int
) -> dict[str, list[float]]:
    """Seconds per call of each runner, taking turns, until the budget or the rep cap (at least MIN_REPS)."""
    for run in runners.values():
        _warm_up(run, x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    start, reps = time.perf_counter(), 0
    while reps < MIN_REPS or (reps < max_reps and time.perf_counter() - start < budget_s):
        for name, run in runners.items():
            t = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t)
        reps += 1
    return times


def batch_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 8, 32, max_batch) if b <= max_batch})


def bench_all(
    runners: dict[str, Runner], images: torch.Tensor, max_batch: int, budget_s: float = 0.3
) -> dict[str, dict[str, Any]]:
    """Per runner: median batch-1 latency (ms) and images/s per batch size, on `images` tiled to each size."""
    per_batch: dict[str, dict[str, float]] = {name: {} for name in runners}
    latency: dict[str, float] = {name: 0.0 for name in runners}
    for b in batch_sizes(max_batch):
        x = images[torch.arange(b) % len(images)].contiguous()
        times = _timed_round_robin(runners, x, budget_s * len(runners), max_reps=50 if b == 1 else 10)
        for name, t in times.items():
            if b == 1:
                latency[name] = statistics.median(t) * 1e3
            per_batch[name][str(b)] = round(b / statistics.median(t), 1)
    out = {}
    for name, speeds in per_batch.items():
        best = max(speeds, key=speeds.__getitem__)
        out[name] = {
            "batch1_latency_ms": round(latency[name], 3),
            "best_batch": int(best),
            "best_images_per_s": speeds[best],
            "images_per_s": speeds,
        }
    return out
