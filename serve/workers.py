"""The CPU decode worker processes: forked once, deaf to Ctrl-C, dead with their parent, and ended at
once (not drained) when the run is interrupted, so a Ctrl-C or a killed serve never leaves them behind."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

import torch

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_S = 0.5  # the portable backstop: how often a worker checks that its parent still lives


def die_with_parent(parent: int) -> None:
    """Make this process end when `parent` does, even after kill -9 of the parent.

    Linux: the kernel sends SIGKILL when the parent thread that forked us exits (prctl PR_SET_PDEATHSIG).
    Everywhere: a daemon thread polls getppid(), which changes when the parent dies (re-parented to init
    or a subreaper); it also covers a parent that died before prctl took effect.
    """
    if sys.platform.startswith("linux"):
        # no libc symbol (unusual libc): the poll below still works
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while not threading.Event().wait(PARENT_POLL_S):
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="imgclf-parent-watch", daemon=True).start()


def init_worker(parent: int) -> None:
    # A terminal's Ctrl-C goes to the whole process group; only the parent decides what it means, so the
    # workers neither print KeyboardInterrupt tracebacks nor break the pool under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    torch.set_num_threads(1)  # parallelism comes from the processes; threads inside them only contend


class DecodeWorkers:
    """A fork-started process pool whose shutdown never waits for queued work on an abort."""

    def __init__(self, workers: int):
        # fork (as DataLoader does on Linux) starts in milliseconds; the pool forks all workers on its
        # first task, so run one now, from this thread, before reader threads (whose locks a child could
        # inherit) or CUDA exist. PR_SET_PDEATHSIG is tied to this forking thread: call it from the main one.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        self.workers = workers
        self.pool = ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(),)
        )
        self.pool.submit(int).result()

    def submit(self, fn: Callable, *args) -> Future:
        return self.pool.submit(fn, *args)

    def pids(self) -> list[int]:
        return list(getattr(self.pool, "_processes", None) or {})

    def close(self, abort: bool = False) -> None:
        """Normal end: let the workers finish. Abort (Ctrl-C, an error): cancel what is queued and end
        the workers now; waiting for them is what hung serve under Ctrl-C."""
        if not abort:
            self.pool.shutdown(wait=True, cancel_futures=True)
            return
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
