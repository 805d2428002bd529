"""How many DataLoader workers a process gets by default: what this machine can actually run.

A fixed default (4) on a 2-core machine made PyTorch warn three times per run; `auto` divides the
CPUs this process may use (affinity, so containers and `taskset` count) among the training
processes on this node (LOCAL_WORLD_SIZE, set by accelerate/torchrun).
"""

from __future__ import annotations

import os

AUTO = "auto"
MAX_AUTO_WORKERS = 8  # beyond this, decode workers mostly fight over memory bandwidth


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity API
        return os.cpu_count() or 1


def auto_num_workers() -> int:
    """min(8, usable CPUs / local processes); 0 (load in the training process) when there are more processes than CPUs."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(0, min(MAX_AUTO_WORKERS, usable_cpus() // local))


def resolve_num_workers(value: int | str) -> int:
    """`auto` → auto_num_workers(); an explicit number stays as given."""
    return auto_num_workers() if value == AUTO else int(value)
