"""Ctrl-C for every command: one line and exit 130 at any moment, never a traceback.

While a command starts (importing torch and the rest, parsing its flags) nothing has been written, and a
KeyboardInterrupt raised inside a library's import prints a traceback through code the user never wrote:
so from the first import of `core` in a process started as one of our commands (core/__init__.py) until
the command calls `started()`, Ctrl-C ends the process at once. From then on it raises KeyboardInterrupt,
so the stage's own cleanup runs, and `command` turns one that reaches main() into the same line.

A terminal's Ctrl-C goes to the whole process group, and an impatient user presses it again: a second
KeyboardInterrupt landing inside cleanup (a generator's `finally`, a join) printed "Exception ignored
in ..." or left the exit half done. So the first SIGINT raises KeyboardInterrupt once and every later one
is ignored; and a watchdog ends the process EXIT_GRACE_S after the first, whatever a join or an
interpreter-exit hook is still waiting for (rows are flushed batch by batch, so nothing written is lost).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

from core.errors import debug_enabled

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
EXIT_GRACE_S = 30.0  # far above a clean teardown, even on a loaded machine
INTERRUPTED_LINE = "interrupted"
# How each command is started: the console scripts of pyproject.toml, and `python -m X` / `python X.py`.
COMMAND_SCRIPTS = (
    "imgclf-train",
    "imgclf-split",
    "imgclf-demo-data",
    "imgclf-export",
    "imgclf-serve",
    "imgclf-sort",
)
COMMAND_FILES = (  # what `python -m` sets argv[0] to, and `python train/main.py` passes
    "train/main.py",
    "train/split.py",
    "train/demo_data.py",
    "export/main.py",
    "serve/main.py",
    "serve/sort.py",
)

F = TypeVar("F", bound=Callable[..., int | None])


def _is_first_process() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"  # under a launcher every process gets the Ctrl-C


def _exit_now(signum: int, frame: FrameType | None) -> None:
    try:
        if _is_first_process():
            os.write(2, f"{INTERRUPTED_LINE}\n".encode())  # one unbuffered write: safe in a signal handler
            if debug_enabled():  # IMGCLF_DEBUG=1: where the start stood, for a bug report on a slow start
                os.write(2, "".join(traceback.format_stack(frame)).encode(errors="replace"))
    finally:  # Nothing is written while a command starts: no cleanup, and no exit hooks of half-imported code.
        os._exit(EXIT_INTERRUPTED)


def _first_interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: a second Ctrl-C must find it already ignored
    arm_exit_deadline(EXIT_GRACE_S)
    raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


_command_process = False  # this process was started as one of our commands (set by core/__init__.py)


def take_over_start() -> None:
    """core/__init__.py, in a process started as one of our commands: Ctrl-C is ours until `started()`,
    and the process's exit is ours too (a deadline after the first Ctrl-C). A process that merely uses our
    code (a user's script, a notebook calling main()) keeps its own Ctrl-C: no os._exit, no deadline."""
    global _command_process
    _command_process = True
    exit_while_starting()


def exit_while_starting() -> None:
    """Ctrl-C ends the process at once (one line, 130) until `started()`. Only over Python's own handler:
    an ignored SIGINT (a background job) stays ignored, and a handler someone installed stays theirs."""
    if _in_main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_now)


def started() -> None:
    """The command's work begins (heavy imports done): Ctrl-C raises KeyboardInterrupt again, so the stage's
    cleanup runs; the first one also ignores later ones and bounds the exit (as in `interrupt_once`)."""
    if _in_main_thread() and signal.getsignal(signal.SIGINT) is _exit_now:
        signal.signal(signal.SIGINT, _first_interrupt)


_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # where train/, serve/ ... live


def started_as_command(argv0: str) -> bool:
    """Whether this process was started as one of our commands: argv[0] (as the console script or `python -m`
    sets it before the first import of `core`) is a console script's exact name or resolves to one of OUR
    entry files. A user's own `train/main.py` that imports `core` as a library keeps its Ctrl-C (and its
    `finally` blocks); so does a multiprocessing spawn/forkserver child, which re-runs the parent's main
    file as `__mp_main__` with the parent's argv but never calls `started()`."""
    # `import multiprocessing` aliases __mp_main__ to __main__; a spawn child's is its own
    rerun = sys.modules.get("__mp_main__")
    if rerun is not None and rerun is not sys.modules.get("__main__"):
        return False
    if os.path.basename(argv0) in COMMAND_SCRIPTS:
        return True
    try:
        resolved = os.path.realpath(argv0)
    except (OSError, ValueError):  # an argv[0] with a NUL byte, or a cwd that is gone
        return False
    return resolved in {os.path.join(_PACKAGE_ROOT, *f.split("/")) for f in COMMAND_FILES}


def command(fn: F) -> F:
    """Decorate a command's main(): Ctrl-C at any moment of it is one line and exit 130. In a process
    started as the command the body runs under `exit_while_starting` until it calls `started()`; a
    KeyboardInterrupt (after that, or any time when main() is called in-process by a script, a notebook
    or a test) becomes the line, its cleanup done on the way out. On return the SIGINT handler is the
    caller's again."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.getsignal(signal.SIGINT)
        if _command_process:  # called in-process by someone else's code: their Ctrl-C stays theirs
            exit_while_starting()
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if _is_first_process():
                print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
        finally:
            if _in_main_thread() and signal.getsignal(signal.SIGINT) in (_exit_now, _first_interrupt):
                signal.signal(signal.SIGINT, previous)

    return wrapper  # type: ignore[return-value]


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
    rest of the process: it is on its way out). Outside the main thread, or in a process that only uses
    our code (a user's script, a notebook): no change, so their later Ctrl-C and their process stay theirs."""
    if not _command_process or not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _first_interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _first_interrupt:  # not interrupted: as before
            signal.signal(signal.SIGINT, previous)
