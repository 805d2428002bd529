"""Stream the inputs to classify: folders walked lazily in sorted order, explicit files, and URLs.

Each file is classified once, however the inputs overlap (D twice, D/ and D/., a file and its folder,
D and D/sub, a symlink and its target): no folder is walked twice, and a file is keyed by its real
location, the (st_dev, st_ino) of the folder that holds it plus its name, so the first input that reaches
it names it. A walked file's key costs no system call (its folder was stat'ed to be listed); only a
16-byte digest per file is kept, so the stream stays lazy on huge trees.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS, is_image_file
from core.tree import walk_tree
from serve.pathnames import escape_path
from serve.row_paths import choose_base, is_url, row_path

MAX_FILE_MB = 256  # default --max-file-mb: far above any photo, far below what would exhaust memory


@dataclass(frozen=True)
class Item:
    """One thing to classify. `path` is what the output's path column says (escaped, serve.pathnames);
    `error` is known up front; `max_bytes` caps what is read from the file or URL."""

    source: str
    path: str
    error: str = ""
    seq: int = 0  # position in this run's stream; orders the merge of per-process part files
    max_bytes: int = MAX_FILE_MB * 2**20


def check_inputs(inputs: list[str]) -> None:
    """Refuse a missing input before any output exists: a typo is a user error, not an error row."""
    if not inputs:
        raise UserError("no inputs given; name folders, image files or http(s) URLs to classify")
    for text in inputs:
        if not is_url(text) and not os.path.exists(text):
            raise UserError(f"input not found: {text} (give an existing folder, image file or http(s) URL)")


def iter_items(
    inputs: list[str],
    absolute: bool = False,
    max_bytes: int = MAX_FILE_MB * 2**20,
    base: str | None = None,
) -> Iterator[Item]:
    """Every item in input order, each file once; folder contents sorted. Paths are relative to `base`
    (serve.row_paths; default: the base a new output gets), so `dirA/x.jpg` and `dirB/x.jpg` stay distinct
    and an image keeps its path (the resume key) whatever the other inputs are."""
    base = base if base is not None else choose_base(inputs)
    seen: set = set()  # files already yielded (their _file_key), and URLs
    walked: set = set()  # folders already walked, shared by all inputs
    for text in inputs:
        if is_url(text):
            if _first_time(text, seen):
                yield Item(text, escape_path(text), max_bytes=max_bytes)
        elif os.path.isdir(text):
            for full, _rel, key in _walk(text, "", walked):
                if _first_time(key, seen):
                    yield Item(full, row_path(full, base, absolute), max_bytes=max_bytes)
        elif _first_time(_file_key(text), seen):
            shown = row_path(text, base, absolute)
            yield Item(text, shown, _explicit_file_error(text), max_bytes=max_bytes)


def _first_time(key, seen: set) -> bool:
    if key in seen:
        return False
    seen.add(key)
    return True


def _file_key(path: str) -> bytes | str:
    """Where the file really is: symlinks and every spelling of the path give the same key."""
    real = os.path.realpath(path)
    folder, name = os.path.split(real)
    try:
        st = os.stat(folder)
    except OSError:  # an unreadable folder: the read will say why
        return real
    return _entry_key(_folder_id(st), name)


def _folder_id(st: os.stat_result) -> bytes:
    return f"{st.st_dev}:{st.st_ino}/".encode()


def _entry_key(folder: bytes, name: str) -> bytes:
    # a digest, not (folder, name): 16 bytes per file whatever the name's length; the same on every rank
    return hashlib.blake2b(folder + os.fsencode(name), digest_size=16).digest()


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.rstrip('/')}/{rel}" if prefix not in ("", ".") else rel


def _explicit_file_error(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return ""
    return f"not an image file (extension {escape_path(ext) or 'none'!r}; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})"


def _walk(directory: str, rel: str, visited: set[bytes]) -> Iterator[tuple[str, str, bytes | str]]:
    """(path, relative path, _file_key) per image; folders in `visited` are not walked again. Iterative
    (core.tree): a 1,200-level tree walks like any other, a folder past the OS path limit is a warning."""
    for entry, child, folder in walk_tree(directory, visited):
        if is_image_file(entry.name):
            key = _file_key(entry.path) if _is_symlink(entry) else _entry_key(folder, entry.name)
            yield entry.path, _join(rel, child) if rel else child, key


def _is_symlink(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return True  # unknown: resolve it the slow, sure way
