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


# ------------------------------------------------------------------------------ serve: workers vs model threads

MAX_DECODE_WORKERS = 16  # beyond this, decode processes mostly fight over memory bandwidth
CPU_MODEL_SHARE = 4  # on a CPU backend a model step costs several times a decode: 1 core in 4 decodes


def plan_threads(
    cores: int,
    backend_kind: str,
    world: int = 1,
    workers: int | None = None,
    threads: int | None = None,
) -> tuple[int, int]:
    """(decode worker processes, model threads) for one of `world` serving processes on `cores` CPUs,
    decided from where the model runs (`backend_kind` 'cuda' or 'cpu'), before any worker forks.

    A GPU model leaves the CPUs to decoding (all but one core decode). A CPU model is the bottleneck, so
    it gets most cores: 15 workers and 1 model thread on a 16-core box with a CPU-only onnxruntime was
    ~10x slower than the machine allows. Explicit `workers` / `threads` win; the other fills the rest.
    """
    if backend_kind not in ("cuda", "cpu"):
        raise ValueError(f"unknown backend kind {backend_kind!r}; valid: cuda, cpu")
    share = max(1, cores // max(1, world))
    if workers is None:
        if backend_kind == "cuda":
            workers = max(1, min(MAX_DECODE_WORKERS, share - 1))
        else:
            workers = max(1, min(MAX_DECODE_WORKERS, share // CPU_MODEL_SHARE)) if share >= 2 else 0
    return workers, threads or max(1, share - workers)
