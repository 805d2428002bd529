"""Process-group lifetime for the stages' entry points: the group is destroyed on every way out."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., int | None])


def destroy_process_group() -> None:
    """Destroy torch.distributed's default group if one is up (a no-op for a single process).

    A gloo group still alive at interpreter exit aborts the process ("terminate called without an
    active exception"): its worker threads outlive the interpreter. Under torchrun a healthy node
    then waits out the 300 s exit barrier for the aborted one."""
    if "torch.distributed" not in sys.modules:  # never imported, so no group is up; `--help` stays torch-free
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def ends_process_group(fn: F) -> F:
    """Decorate a CLI main(): whatever way it leaves (return, error, Ctrl-C), the group goes first."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            destroy_process_group()

    return wrapper  # type: ignore[return-value]
