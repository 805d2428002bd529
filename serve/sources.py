"""Read an item's bytes from disk or over http(s); failures become a reason string for the error column.

Only regular files are read, and never more than the item's cap + 1 bytes: a FIFO, a device (/dev/zero
behind a symlink), a socket or a huge sparse file must become an error row, not a hung or exhausted run.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import urllib.error
import urllib.request

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


def read_bytes(item: Item, timeout: float = 10.0) -> bytes:
    if is_url(item.source):
        return _fetch(item.source, timeout, item.max_bytes)
    return read_file(item.source, item.max_bytes)


def read_file(path: str, max_bytes: int) -> bytes:
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
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew after the fstat
        raise SourceError(_too_big(len(data), max_bytes))
    return data


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


def _fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf-serve"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"HTTP {exc.code} {exc.reason} fetching URL") from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, socket.timeout) else exc.reason
        raise SourceError(f"cannot fetch URL: {reason}") from None
    except TimeoutError:
        raise SourceError(f"cannot fetch URL: timed out after {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot fetch URL: {exc}") from None
    if len(data) > max_bytes:
        raise SourceError(
            f"download larger than the --max-file-mb limit ({max_bytes / 2**20:g} MiB); refused"
        )
    return data
