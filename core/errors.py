"""User-facing errors: one clear line and exit code 2, never a traceback for a fixable mistake."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2
DEBUG_ENV = "IMGCLF_DEBUG"  # IMGCLF_DEBUG=1: the full traceback after the one line, for bug reports

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """A mistake the user can fix (bad config, missing folder, wrong model file)."""


def cli_entry(fn: F) -> F:
    """Wrap a CLI main(): a UserError prints `error: ...` on stderr (plus its traceback under IMGCLF_DEBUG=1)
    and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            if debug_enabled():
                traceback.print_exception(exc, file=sys.stderr)
                sys.stderr.flush()
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
