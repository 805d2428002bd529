"""Graceful preemption: SIGTERM/SIGINT set a flag that the loop reads at the next step boundary.

A second signal of the same kind gets the default behaviour back (a second Ctrl-C kills at once).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as a shell reports it
# Test-only: a real SIGTERM to this process once the run has done this many training batches (counted over
# all epochs), so a preemption test stops at an exact step instead of racing a timer or the progress output.
TEST_SIGTERM_ENV = "IMGCLF_TEST_SIGTERM_AT_BATCH"


class StopFlag:
    """Context manager installing the handlers; `received` is the first signal caught, or None."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._sigterm_at = int(os.environ.get(TEST_SIGTERM_ENV) or 0)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum)
        signal.signal(signum, signal.SIG_DFL)

    def __enter__(self) -> StopFlag:  # noqa: PYI034
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def test_hook(self, batches_done: int) -> None:
        if batches_done == self._sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by _handle at once, exactly like a real preemption

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received, 0) if self.received else 0
