"""The byte budget: bytes read from files and URLs but not yet decoded, across every read thread and
decode worker. Many files each just under --max-file-mb, read ahead by 8 threads for several batches,
once held more than 8 GB; a reader now waits until the bytes it needs fit in the budget.

Deadlock-free by construction: a reader that finds the budget empty always goes ahead (one file larger
than the whole budget goes through alone), and a reader waits only while some held bytes are on their
way to being released on their own (CPU decodes, which finish without anyone waiting for the reader).
Bytes "parked" for the batched GPU decode are freed only when their batch is finished, which may need
the waiting reader: they count in the total but never make a reader wait. Instead they are bounded
themselves: a file parks only while the parked bytes stay within the limit (or none are parked), else it
is decoded on the CPU like any other file. So everything held stays within twice the limit plus one file.
"""

from __future__ import annotations

import threading

MAX_INFLIGHT_MB = 512  # default --max-inflight-mb: a few hundred MB, far below what exhausts memory


class BudgetClosed(Exception):
    """The pipeline is shutting down: a waiting reader gives up instead of waiting forever."""


class ByteBudget:
    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.used = 0  # every byte held, parked included
        self.parked = 0
        self.peak = 0
        self.closed = False
        self._cond = threading.Condition()

    def acquire(self, n: int) -> None:
        """Wait until `n` more bytes fit (or nothing that frees itself is held), then hold them."""
        with self._cond:
            while not self.closed and self.used - self.parked > 0 and self.used + n > self.limit:
                self._cond.wait(timeout=1.0)  # a timeout only as a backstop; release() notifies
            if self.closed:
                raise BudgetClosed("stopped")
            self.used += n
            self.peak = max(self.peak, self.used)

    def resize(self, held: int, now: int) -> None:
        """A hold of `held` bytes becomes `now` bytes (the file grew or shrank after its stat), no waiting."""
        with self._cond:
            self.used += now - held
            self.peak = max(self.peak, self.used)
            self._cond.notify_all()

    def try_park(self, n: int) -> bool:
        """Let `n` held bytes wait for a batch to finish (GPU decode), not for a decode of their own, when
        the parked bytes stay within the limit (one file alone always parks); False: decode it elsewhere."""
        with self._cond:
            if self.parked and self.parked + n > self.limit:
                return False
            self.parked += n
            self._cond.notify_all()
            return True

    def release(self, n: int, parked: bool = False) -> None:
        with self._cond:
            self.used -= n
            if parked:
                self.parked -= n
            self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting reader with BudgetClosed: shutdown must not wait on a budget."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
