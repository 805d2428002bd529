"""Ctrl-C for a streaming command (serve): the first one stops the run, and nothing after it can hang or
print a traceback.

A terminal's Ctrl-C goes to the whole process group, and an impatient user presses it again: a second
KeyboardInterrupt landing inside cleanup (a generator's `finally`, a join) printed "Exception ignored
in ..." or left the exit half done. So the first SIGINT raises KeyboardInterrupt once and every later one
is ignored; and a watchdog ends the process EXIT_GRACE_S after the first, whatever a join or an
interpreter-exit hook is still waiting for (rows are flushed batch by batch, so nothing written is lost).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_GRACE_S = 30.0  # far above a clean teardown, even on a loaded machine


def _first_interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: a second Ctrl-C must find it already ignored
    arm_exit_deadline(EXIT_GRACE_S)
    raise KeyboardInterrupt


def arm_exit_deadline(seconds: float, code: int = EXIT_INTERRUPTED) -> threading.Timer:
    """End the process with `code` after `seconds` unless it has exited by then (a daemon timer: it keeps
    running through atexit hooks, where unbounded joins of pool threads live)."""

    def force() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()
    return timer


@contextlib.contextmanager
def interrupt_once() -> Iterator[None]:
    """Within this block the first SIGINT raises KeyboardInterrupt and later ones are ignored (for the
    rest of the process: it is on its way out). Outside the main thread: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _first_interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _first_interrupt:  # not interrupted: as before
            signal.signal(signal.SIGINT, previous)
