"""A short speed check for each format: batch-1 latency and the best images/s over a few batch sizes.

Each batch size is warmed up (first calls pay for kernel selection and thread-pool start-up, which made
a tiny CNN look 80 ms slow at batch 1), then repeated; the median is reported.
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


def _timed(run: Runner, x: torch.Tensor, budget_s: float, max_reps: int) -> list[float]:
    """Seconds per call after a warm-up (≥3 calls and ≥50 ms), until the budget or the rep cap (≥5 reps)."""
    start, calls = time.perf_counter(), 0
    while calls < WARMUP_CALLS or time.perf_counter() - start < WARMUP_S:
        run(x)
        calls += 1
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < MIN_REPS or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return times


def batch_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 8, 32, max_batch) if b <= max_batch})


def bench(run: Runner, images: torch.Tensor, max_batch: int, budget_s: float = 0.3) -> dict[str, Any]:
    """Median batch-1 latency (ms) and throughput per batch size, on `images` (uint8 NCHW) tiled to size."""
    per_batch: dict[str, float] = {}
    latency_ms = 0.0
    for b in batch_sizes(max_batch):
        x = images[torch.arange(b) % len(images)].contiguous()
        times = _timed(run, x, budget_s, max_reps=50 if b == 1 else 10)
        if b == 1:
            latency_ms = statistics.median(times) * 1e3
        per_batch[str(b)] = round(b / statistics.median(times), 1)
    best = max(per_batch, key=per_batch.__getitem__)
    return {"batch1_latency_ms": round(latency_ms, 3), "best_batch": int(best),
            "best_images_per_s": per_batch[best], "images_per_s": per_batch}
