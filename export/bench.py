"""A short speed check for each format: batch-1 latency and the best images/s over a few batch sizes."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

Runner = Callable[[torch.Tensor], torch.Tensor]


def _timed(run: Runner, x: torch.Tensor, budget_s: float, max_reps: int) -> list[float]:
    """Seconds per call, after one warm-up call, until the budget or the rep cap is reached (at least 2)."""
    run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return times


def batch_sizes(max_batch: int) -> list[int]:
    return sorted({b for b in (1, 8, 32, max_batch) if b <= max_batch})


def bench(run: Runner, crop: int, max_batch: int, budget_s: float = 0.3) -> dict[str, Any]:
    """Median batch-1 latency (ms) and throughput per batch size on random uint8 input (speed only)."""
    g = torch.Generator().manual_seed(0)
    per_batch: dict[str, float] = {}
    latency_ms = 0.0
    for b in batch_sizes(max_batch):
        x = torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8, generator=g)
        times = _timed(run, x, budget_s, max_reps=30 if b == 1 else 5)
        if b == 1:
            latency_ms = statistics.median(times) * 1e3
        per_batch[str(b)] = round(b / statistics.median(times), 1)
    best = max(per_batch, key=per_batch.__getitem__)
    return {"batch1_latency_ms": round(latency_ms, 3), "best_batch": int(best),
            "best_images_per_s": per_batch[best], "images_per_s": per_batch}
