"""Read an item's bytes from disk or over http(s); failures become a reason string for the error column.

Only regular files are read, and never more than the item's cap + 1 bytes: a FIFO, a device (/dev/zero
behind a symlink), a socket or a huge sparse file must become an error row, not a hung or exhausted run.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import socket
import stat
import threading
import urllib.error
import urllib.request

from serve.budget import BudgetClosed, ByteBudget
from serve.discover import Item, is_url

NOT_REGULAR = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
OPEN_ERRORS = {
    errno.EACCES: "permission denied (cannot read the file)",
    errno.EPERM: "permission denied (cannot read the file)",
    errno.ENOENT: "file not found (deleted or a broken symlink)",
    errno.ELOOP: "symlink loop (too many levels of symbolic links)",
    errno.ENXIO: "not a regular file (a socket or a device without a reader)",
}


class SourceError(Exception):
    """The bytes could not be read; `str()` is the reason for the error column."""


def read_bytes(item: Item, timeout: float = 10.0, budget: ByteBudget | None = None) -> bytes:
    """The item's bytes. With a `budget`, they are held in it on return (the caller releases len(data)
    once decoded); the read waits for room before it starts."""
    try:
        if is_url(item.source):
            return _fetch(item.source, timeout, item.max_bytes, budget)
        return read_file(item.source, item.max_bytes, budget)
    except BudgetClosed:
        raise SourceError("not read: the run is stopping") from None


def read_file(path: str, max_bytes: int, budget: ByteBudget | None = None) -> bytes:
    """The file's bytes if it is a regular file (symlinks followed) of at most `max_bytes`.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. The type and size
    come from fstat of the opened descriptor (no race with a swap of the name), and the read stops at
    max_bytes + 1 however large the file is or grows.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SourceError(OPEN_ERRORS.get(exc.errno, f"cannot read file: {exc.strerror or exc}")) from None
    try:
        st = os.fstat(fd)
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFREG:
            raise SourceError(f"not a regular file ({NOT_REGULAR.get(kind, 'special file')}); not read")
        if st.st_size > max_bytes:
            raise SourceError(_too_big(st.st_size, max_bytes))
        with _held(budget, st.st_size) as hold:
            data = _read_at_most(fd, max_bytes + 1)
            hold.resize(len(data))
            if len(data) > max_bytes:  # it grew after the fstat
                raise SourceError(_too_big(len(data), max_bytes))
            hold.keep()
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return data


class _Hold:
    """Bytes held in a budget while they are read: released on failure, kept (for the caller to release
    once decoded) on success."""

    def __init__(self, budget: ByteBudget | None, n: int):
        self.budget, self.n, self.kept = budget, n, False

    def resize(self, now: int) -> None:
        if self.budget is not None and now != self.n:
            self.budget.resize(self.n, now)
        self.n = now

    def keep(self) -> None:
        self.kept = True


@contextlib.contextmanager
def _held(budget: ByteBudget | None, n: int):
    if budget is not None:
        budget.acquire(n)
    hold = _Hold(budget, n)
    try:
        yield hold
    finally:
        if budget is not None and not hold.kept:
            budget.release(hold.n)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _too_big(size: int, max_bytes: int) -> str:
    return (
        f"file larger than the --max-file-mb limit ({size / 2**20:.1f} MiB > {max_bytes / 2**20:g} MiB); "
        "not read"
    )


def _fetch(url: str, timeout: float, max_bytes: int, budget: ByteBudget | None = None) -> bytes:
    """The URL's body within one deadline, `timeout` seconds from now, for connect, headers and body
    together: a server trickling one byte a second would otherwise keep every per-read timeout happy
    forever. At the deadline a watchdog shuts the socket down, which ends a read blocked anywhere."""
    watch = _Deadline(timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf-serve"})
    try:
        with watch, watch.opener().open(request, timeout=timeout) as response:
            limit = min(max_bytes + 1, _content_length(response) or max_bytes + 1)
            with _held(budget, limit) as hold:
                data = _read_body(response, limit, watch)
                hold.resize(len(data))
                if len(data) > max_bytes:
                    raise SourceError(
                        f"download larger than the --max-file-mb limit ({max_bytes / 2**20:g} MiB); refused"
                    )
                hold.keep()
    except urllib.error.HTTPError as exc:
        raise SourceError(f"HTTP {exc.code} {exc.reason} fetching URL") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if watch.expired or isinstance(exc, TimeoutError) or _timed_out(exc):
            raise SourceError(
                f"cannot fetch URL: no complete answer within --timeout {timeout:g} s"
            ) from None
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise SourceError(f"cannot fetch URL: {reason}") from None
    return data


def _content_length(response) -> int | None:
    """The announced body size, to hold no more than that in the budget (http.client reads no further)."""
    try:
        n = int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return n if n >= 0 else None


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, socket.timeout)


def _read_body(response, limit: int, watch: _Deadline) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = response.read(min(left, 1 << 16))
        if watch.expired:
            raise TimeoutError
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class _Deadline:
    """One fetch's deadline: the sockets it opens (redirects open more) are shut down when it passes."""

    def __init__(self, seconds: float):
        self.seconds, self.expired = seconds, False
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def __enter__(self) -> _Deadline:
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.socks.append(sock)
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)

    def opener(self) -> urllib.request.OpenerDirector:
        watch = self

        class Http(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                watch.add(self.sock)

        class Https(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                watch.add(self.sock)

        class HttpHandler(urllib.request.HTTPHandler):
            def http_open(self, req):  # noqa: ANN001 - urllib's signature
                return self.do_open(Http, req)

        class HttpsHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):  # noqa: ANN001
                return self.do_open(Https, req, context=self._context)

        return urllib.request.build_opener(HttpHandler, HttpsHandler)
