"""Walk a folder tree without recursion: a 1,200-level tree (or a symlink farm) must not raise
RecursionError, as os.walk and Path.rglob do on Python 3.11. A folder that cannot be listed (permission,
a path past the OS limit) is skipped with one warning line; nothing below it stops the walk."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

SHOWN_PATH_CHARS = 200  # a warning shows the end of a very long path: the part that tells where it is


def shown_path(path: str) -> str:
    return path if len(path) <= SHOWN_PATH_CHARS else "…" + path[-SHOWN_PATH_CHARS:]


def list_folder(path: str) -> tuple[bytes, list[os.DirEntry]] | None:
    """(the folder's (st_dev, st_ino) id, its entries sorted by name), or None after a warning."""
    try:
        st = os.stat(path)
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        print(f"warning: cannot list {shown_path(path)}: {exc.strerror or exc}; skipped", file=sys.stderr)
        return None
    return f"{st.st_dev}:{st.st_ino}/".encode(), entries


def is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; loops are caught by the visited folder ids
    except OSError:
        return False


def walk_tree(root: str, visited: set[bytes] | None = None) -> Iterator[tuple[os.DirEntry, str, bytes]]:
    """(entry, path relative to root with '/', id of its folder) for every non-hidden file under root,
    depth first in name order, lazily: a folder is listed when the walk reaches it. Folders already in
    `visited` (a symlink loop, a second link, an earlier input) are not walked again."""
    visited = set() if visited is None else visited
    stack: list[tuple[Iterator[os.DirEntry], bytes, str]] = []

    def enter(path: str, rel: str) -> None:
        listing = list_folder(path)
        if listing is not None and listing[0] not in visited:
            visited.add(listing[0])
            stack.append((iter(listing[1]), listing[0], rel))

    enter(root, "")
    while stack:
        entries, folder, rel = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):  # hidden files and folders, .DS_Store, .ipynb_checkpoints
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        if is_dir(entry):
            enter(entry.path, child)
        else:
            yield entry, child, folder


def files_under(root: str | os.PathLike) -> list[str]:
    """Every non-hidden file under root (full paths), sorted as strings."""
    return sorted(entry.path for entry, _, _ in walk_tree(os.fspath(root)))
