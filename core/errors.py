"""User-facing errors: one clear line and exit code 2, never a traceback for a fixable mistake."""

from __future__ import annotations

import errno
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


# A write the file system refuses for want of room: a full disk, a quota, or a file past the size limit
# (EFBIG: `ulimit -f`, or a FAT32 stick's 4 GB). Each is the user's to fix wherever the write happened.
_FULL_TEXTS = {  # the C library's texts: torch.save, safetensors wrap the OS error and keep only its message
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": getattr(errno, "EDQUOT", errno.ENOSPC),
    "File too large": errno.EFBIG,
}
DISK_FULL_ERRNOS = frozenset(_FULL_TEXTS.values())


def disk_full(exc: BaseException | None) -> OSError | BaseException | None:
    """The disk-full error (ENOSPC/EDQUOT/EFBIG) in `exc` or its causes, or None: a full disk is the user's
    to fix wherever the write happened, so every stage reports it the same way instead of as its own failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        if any(text in str(exc) for text in _FULL_TEXTS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def full_errno(exc: BaseException) -> int:
    """The errno of a disk-full error, read from its text when a C writer's wrapper kept only that."""
    code = getattr(exc, "errno", None)
    if code in DISK_FULL_ERRNOS:
        return code
    return next((c for text, c in _FULL_TEXTS.items() if text in str(exc)), errno.ENOSPC)


def full_reason(exc: BaseException) -> str:
    """The OS's words for a disk-full error: its strerror, or the first line of the message a wrapper kept."""
    return getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]


def full_error(exc: BaseException, filename: str) -> OSError:
    """The disk-full error `exc` (found by `disk_full`) as a plain OSError naming `filename`, the file the
    user knows: what a writer raises in place of a temp name or a C writer's wrapped message."""
    return OSError(full_errno(exc), full_reason(exc), filename)


def full_problem(exc: BaseException) -> tuple[str, str]:
    """What went wrong and what frees the write: a file past a size limit is not fixed by freeing space."""
    if full_errno(exc) == errno.EFBIG:
        return "file too large", "lift the file-size limit (ulimit -f; FAT32 holds 4 GB a file)"
    return "disk full", "free space"


def disk_full_line(
    exc: BaseException,
    elsewhere: str = "another output folder",
    again: str = "run again; files written before are kept",
) -> str:
    """One line naming the file that could not be written (when the error knows it) and the fixes: free
    the write, or choose `elsewhere`; then `again` (a stage says its own flag and verb)."""
    name = getattr(exc, "filename", None)
    where = f" writing {name}" if name else ""
    what = full_reason(exc)
    problem, fix = full_problem(exc)
    return f"{problem}{where} ({what[:200]}): {fix} or choose {elsewhere}, then {again}"


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
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            print(f"error: {disk_full_line(full)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
