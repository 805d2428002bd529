"""One writer per output (a predictions file, a training run folder, an export folder): an exclusive flock on
`<out>.lock` beside it, held for the whole run.

The kernel drops a flock when its holder dies, so a lock file left by a killed run never blocks the next
one: only the lock counts, never the file's existence. The file holds the holder's pid, host and start
time so the refused run can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import UserError


def lock_path(out: Path) -> Path:
    """Beside the real file: two --out spellings of one file (a symlinked folder, ..) share one lock."""
    real = Path(os.path.realpath(out))
    return real.with_name(real.name + ".lock")


class OutputLock:
    """`with OutputLock(out):` — raises UserError naming the other writer when `out` is taken.

    `writer` names who holds such a lock ("serve", "training", "export") and `fix` is the way out a refused
    user is told, so every stage's refusal is one line in its own words."""

    def __init__(self, out: Path, writer: str = "serve", fix: str = "choose another --out"):
        self.out, self.path, self.fd = out, lock_path(out), None
        self.made: list[Path] = []  # folders acquire() created for the lock file, removed again when empty
        self.writer, self.fix = writer, fix

    def __enter__(self) -> OutputLock:
        holder = self.acquire()
        if holder is not None:
            raise UserError(holder)
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> str | None:
        """None when this process now holds the lock, else the refusal (one line naming the holder)."""
        try:
            self.made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(100):  # retried only while a finishing holder unlinks the file under us
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return self._refusal(fd)
                if self._still_linked(fd):
                    self.fd = fd
                    self._describe_me()
                    return None
                os.close(fd)
        except OSError as exc:
            raise UserError(f"cannot write {self.path} ({exc.strerror or exc}); {self.fix}") from None
        raise UserError(
            f"cannot lock {self.path}: it keeps being replaced; is another {self.writer} starting?"
        )

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter re-checks the inode (above)
            os.close(self.fd)
            self.fd = None
        for folder in self.made:  # innermost first: a refused or failed run leaves no empty runs/ behind
            try:
                folder.rmdir()
            except OSError:
                break
        self.made = []

    def _still_linked(self, fd: int) -> bool:
        """A holder unlinks the file before unlocking; a lock taken on that orphan inode is no lock."""
        try:
            st, now = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)

    def _describe_me(self) -> None:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "out": str(self.out),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(me) + "\n").encode(), 0)

    def _refusal(self, fd: int) -> str:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            holder = {}
        finally:
            os.close(fd)
        who = (
            f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            if isinstance(holder, dict) and holder
            else "a process that is just starting"
        )
        return (
            f"{self.out} is being written by another {self.writer} ({who}); wait for it to finish, "
            f"stop it, or {self.fix}"
        )


@contextlib.contextmanager
def held_by_main(lock: OutputLock, state: Any) -> Iterator[None]:
    """The main process holds `lock` for the block; every process refuses together when it is taken.

    `state` is an Accelerator or PartialState (is_main_process, num_processes): under `accelerate launch`
    only rank 0 locks, and its refusal reaches every rank, so none waits alone at a collective."""
    refusal = None
    if state.is_main_process:
        try:
            refusal = lock.acquire()
        except UserError as exc:
            refusal = str(exc)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal:
        raise UserError(refusal)
    try:
        yield
    finally:
        lock.release()


def holder_of(out: Path) -> str | None:
    """The refusal a writer of `out` would get now (a running writer holds it), or None; takes nothing."""
    probe = OutputLock(out)
    refusal = probe.acquire()
    probe.release()
    return refusal
