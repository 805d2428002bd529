"""Stream the inputs to classify: folders walked lazily in sorted order, explicit files, and URLs."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from core.errors import UserError
from core.images import IMAGE_EXTENSIONS, is_image_file

URL_PREFIXES = ("http://", "https://")


@dataclass(frozen=True)
class Item:
    """One thing to classify. `path` is what the output's path column says; `error` is known up front."""

    source: str
    path: str
    error: str = ""
    seq: int = 0  # position in this run's stream; orders the merge of per-process part files


def is_url(text: str) -> bool:
    return text.lower().startswith(URL_PREFIXES)


def check_inputs(inputs: list[str]) -> None:
    """Refuse a missing input before any output exists: a typo is a user error, not an error row."""
    if not inputs:
        raise UserError("no inputs given; name folders, image files or http(s) URLs to classify")
    for text in inputs:
        if not is_url(text) and not os.path.exists(text):
            raise UserError(f"input not found: {text} (give an existing folder, image file or http(s) URL)")


def iter_items(inputs: list[str], absolute: bool = False) -> Iterator[Item]:
    """Every item in input order; folder contents sorted. With several inputs, paths keep the input prefix
    so rows from `dirA/x.jpg` and `dirB/x.jpg` stay distinct (resume keys on the path)."""
    prefixed = len(inputs) > 1
    for text in inputs:
        if is_url(text):
            yield Item(text, text)
        elif os.path.isdir(text):
            for full, rel in walk_images(text):
                shown = os.path.abspath(full) if absolute else (_join(text, rel) if prefixed else rel)
                yield Item(full, shown)
        else:
            yield Item(text, os.path.abspath(text) if absolute else text, _explicit_file_error(text))


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.rstrip('/')}/{rel}" if prefix not in ("", ".") else rel


def _explicit_file_error(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return ""
    return f"not an image file (extension {ext or 'none'!r}; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))})"


def walk_images(root: str) -> Iterator[tuple[str, str]]:
    """(path, path relative to root with '/') for each image under root, recursively, sorted by name.

    Lazy: a directory is listed only when the walk reaches it, so the first image comes out before a
    huge tree is scanned. Directories are keyed by (st_dev, st_ino), so a symlink loop (or a second
    link to a folder already walked) is visited once.
    """
    yield from _walk(root, "", set())


def _walk(directory: str, rel: str, visited: set[tuple[int, int]]) -> Iterator[tuple[str, str]]:
    try:
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in visited:
            return
        visited.add((st.st_dev, st.st_ino))
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        print(f"warning: cannot list {directory}: {exc.strerror or exc}; skipped", file=sys.stderr)
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden files and folders, .DS_Store
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        if _is_dir(entry):
            yield from _walk(entry.path, child, visited)
        elif is_image_file(entry.name):
            yield entry.path, child


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; loops are caught by the visited set
    except OSError:
        return False
