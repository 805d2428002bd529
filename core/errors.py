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
CLIP_CHARS = 100  # a value quoted in an error line: enough to recognise it, never a flood

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """A mistake the user can fix (bad config, missing folder, wrong model file)."""


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """repr(value) cut to `limit` characters: every error that quotes a user's value goes through here, so
    a megabyte string (or a YAML alias bomb) can never turn one error line into gigabytes."""
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # repr of the head only: the cost does not grow with the value
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit has no repr
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
