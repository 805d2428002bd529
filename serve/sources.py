"""Read an item's bytes from disk or over http(s); failures become a reason string for the error column."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

from serve.discover import Item, is_url

MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024


class SourceError(Exception):
    """The bytes could not be read; `str()` is the reason for the error column."""


def read_bytes(item: Item, timeout: float = 10.0) -> bytes:
    return _fetch(item.source, timeout) if is_url(item.source) else _read_file(item.source)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise SourceError("permission denied (cannot read the file)") from None
    except FileNotFoundError:
        raise SourceError("file not found (deleted or a broken symlink)") from None
    except IsADirectoryError:
        raise SourceError("is a directory, not an image file") from None
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None


def _fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf-serve"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"HTTP {exc.code} {exc.reason} fetching URL") from None
    except urllib.error.URLError as exc:
        reason = "timed out" if isinstance(exc.reason, socket.timeout) else exc.reason
        raise SourceError(f"cannot fetch URL: {reason}") from None
    except TimeoutError:
        raise SourceError(f"cannot fetch URL: timed out after {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot fetch URL: {exc}") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise SourceError(f"download larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB; refused")
    return data
