"""Progress for terminals and for batch logs, shared by train and serve.

On a terminal: a tqdm bar whose postfix shows the numbers of the latest report. Without one (SLURM,
nohup, CI, a pipe) a bar's carriage-return frames would fill the log, so each report is one plain,
flushed line instead (`epoch 2/6 step 5/6 loss 0.2362 acc 0.812 ... eta 0:00:02`), and a time-driven
user such as serve gets a line every `seconds`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

SERVE_LOG_SECONDS = 30.0  # serve without a terminal: one line per this many seconds


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def hms(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """`update(n)` advances; `report(metrics)` shows the current numbers (a line without a terminal).

    `later_seconds`: work expected after this bar (the other epochs), added to the ETA as `run ...`.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        seconds: float | None = None,
        stream: TextIO | None = None,
        tty: bool | None = None,
        leave: bool = False,
    ):
        self.stream = stream or sys.stdout
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.enabled, self.seconds, self.later_seconds = enabled, seconds, 0.0
        self.tty = is_tty(self.stream) if tty is None else tty
        self.metrics: dict[str, Any] = {}
        self.start = self.last_line = time.perf_counter()
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                leave=leave,
                dynamic_ncols=True,
                file=self.stream,
                mininterval=0.5,
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif (
            self.enabled and self.seconds is not None and time.perf_counter() - self.last_line >= self.seconds
        ):
            self._line()

    def report(self, metrics: dict[str, Any]) -> None:
        """The numbers as of now (name → value): the bar's postfix on a terminal, else one line."""
        self.metrics = dict(metrics)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(self._metric_text(), refresh=True)
        else:
            self._line()

    def per_unit(self) -> float:
        """Seconds per unit so far in this bar (NaN before the first)."""
        done = self.n - self.initial
        return (time.perf_counter() - self.start) / done if done > 0 else math.nan

    def eta(self) -> float:
        return math.nan if self.total is None else (self.total - self.n) * self.per_unit()

    def _metric_text(self) -> str:
        return "  ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items())

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{self.desc}  {self.unit} {count}"]
        if self.metrics:
            parts.append(self._metric_text())
        if self.seconds is not None and elapsed > 0:  # time-driven users (serve) get the rate here
            parts.append(f"{(self.n - self.initial) / elapsed:.1f} {self.unit}/s")
        if self.total is not None:
            eta = self.eta()
            parts.append(
                f"eta {hms(eta)}" + (f" (run {hms(eta + self.later_seconds)})" if self.later_seconds else "")
            )
        print("  ".join(parts), file=self.stream, flush=True)
        self.last_line = time.perf_counter()

    def write(self, text: str) -> None:
        """A log line that does not tear the bar."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
