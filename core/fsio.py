"""Atomic file and directory writes: a kill never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.errors import disk_full, full_error

# mkstemp/mkdtemp create 0600/0700 entries; give results the mode a plain open()/mkdir() would,
# so run outputs on a shared cluster stay readable by the group. Read once: os.umask both sets and gets.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it is fsynced and renamed over `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with shown_as(tmp_path, dest):
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def final_name(path: str | os.PathLike | None, temp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """The name the user knows for `path`, written under `temp` (a temp file or folder that becomes
    `final`): `final` itself, or its file of the same relative name. A path elsewhere stays as it is."""
    if not path:
        return Path(final)
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(temp))
    if rel == os.curdir:
        return Path(final)
    return Path(path) if rel.startswith(os.pardir) else Path(final) / rel


@contextlib.contextmanager
def shown_as(temp: str | os.PathLike, final: str | os.PathLike) -> Iterator[None]:
    """A full disk (ENOSPC/EDQUOT/EFBIG, also wrapped by a C writer that keeps only the message) while writing
    under `temp` is raised as an OSError naming `final`'s file: the user never made our temp names, and
    cannot act on them. An error that names no file (a buffered write's names none) names `final`; so
    `shown_as(path, path)` makes any write to `path` say where the disk is full."""
    try:
        yield
    except Exception as exc:
        full = disk_full(exc)
        if full is None:
            raise
        raise full_error(full, str(final_name(getattr(full, "filename", None), temp, final))) from exc


def write_bytes_atomic(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv_atomic(dest: str | os.PathLike, header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> None:
    """A whole CSV or none. surrogateescape: a name read from a non-UTF-8 folder name is written back
    as that folder's exact bytes, so the cell still names the folder on disk."""
    with (
        atomic_path(dest) as tmp,
        open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh,
    ):
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _plain_modes(root: Path) -> None:
    """Give a finished temp tree the modes plain open()/mkdir() would have: some writers
    (safetensors, mkstemp) create owner-only files, which a shared run folder must not keep."""
    os.chmod(root, 0o777 & ~_UMASK)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o777 & ~_UMASK)
        for f in files:
            os.chmod(os.path.join(base, f), 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp directory beside `dest`; on success it replaces `dest` whole.

    The old directory is moved aside first and removed after the swap, so at every instant
    `dest` is either the complete old version or the complete new one (plus, after a crash
    in the tiny window between the two renames, a `.old` sibling that `recover_dir` restores).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with shown_as(tmp, dest):
            yield tmp
        swap_dir(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _old_of(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def swap_dir(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Replace `dest` with the finished folder `tmp` (same file system): move the old one aside, rename,
    remove the old. A crash between the two renames leaves `.NAME.old` and no `dest`; `recover_dir`
    (run here first, and by readers before they look) puts it back, so the old version is only ever
    deleted once the new one holds `dest`."""
    tmp, dest = Path(tmp), Path(dest)
    _plain_modes(tmp)
    recover_dir(dest)
    old = _old_of(dest)
    if old.exists():  # a leftover from a crash after the second rename: `dest` holds a complete version
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: str | os.PathLike) -> bool:
    """Undo a crash between swap_dir's two renames: move `.NAME.old` back to `dest` when `dest` is missing.

    The `.old` folder is complete (only a complete `dest` is ever moved aside); a finished-but-unswapped
    temp folder may sit beside it, and is left for its writer to clear. Returns True when it restored."""
    dest = Path(dest)
    old = _old_of(dest)
    if dest.exists() or not old.is_dir():
        return False
    os.replace(old, dest)
    return True


def repair_swaps(folder: str | os.PathLike, names: tuple[str, ...]) -> list[str]:
    """What an interrupted swap or save of `folder/NAME` left, repaired: a `.NAME.old` put back when NAME is
    missing, then leftover temp folders (`.NAME.*.tmp`) and a superseded `.NAME.old` removed. Only for
    a caller that holds the folder's lock (a live writer's temp folder is not a leftover). One line each."""
    folder, lines = Path(folder), []
    if not folder.is_dir():
        return lines
    for name in names:
        if recover_dir(folder / name):
            lines.append(f"repaired {folder / name}: an interrupted save had moved it aside; restored")
        stale = [p for p in folder.glob(f".{name}.*tmp") if p.is_dir()]
        if (folder / name).exists() and _old_of(folder / name).is_dir():
            stale.append(_old_of(folder / name))
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        if stale:
            lines.append(f"removed {len(stale)} leftover folder(s) of an interrupted save of {folder / name}")
    return lines
