"""Where a predictions row's file is: the one rule that writes the path column and the one that reads it.

A row's path is relative to the output's base folder, chosen by the run that creates the file and recorded
in `<out>.meta.json`: the input folder when one folder is classified, else the deepest folder holding every
local input. `--resume` keeps the recorded base, so adding, dropping or reordering inputs never changes the
path (the resume key) of an image already written; an image outside the base is written `../other/x.jpg`.
URLs, and paths under `--absolute`, stand as they are. Resume, `--evaluate` and `imgclf-sort` resolve a
row through `resolve_row`, so each finds the same file serve read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from core.pathnames import escape_path, unescape_path

URL_PREFIXES = ("http://", "https://")


def is_url(text: str) -> bool:
    return text.lower().startswith(URL_PREFIXES)


def choose_base(inputs: list[str] | tuple[str, ...]) -> str | None:
    """The base a new output gets: the folder, for one folder; else the common folder of every local input
    (a file counts as its folder). None when every input is a URL."""
    local = [os.path.abspath(t) for t in inputs if not is_url(t)]
    if not local:
        return None
    folders = [p if os.path.isdir(p) else os.path.dirname(p) for p in local]
    return os.path.commonpath(folders)


def row_path(path: str, base: str | None, absolute: bool = False) -> str:
    """The path column's cell (escaped, core.pathnames) for the file at `path`."""
    if is_url(path):
        return escape_path(path)
    full = os.path.abspath(path)
    return escape_path(full if absolute or base is None else os.path.relpath(full, base))


def resolve_row(cell: str, base: str | os.PathLike | None) -> str | None:
    """The file (or URL) a path cell names; None for a relative cell when no base is known."""
    name = unescape_path(cell)
    if is_url(name) or os.path.isabs(name):
        return name
    if base is None:
        return None
    return os.path.normpath(os.path.join(base, name))


def meta_path(out: Path) -> Path:
    """Where the record of what wrote the predictions file `out` lives (serve.provenance writes it)."""
    return out.with_name(out.name + ".meta.json")


def read_record(meta: Path) -> dict | None:
    """The JSON object in `<out>.meta.json`, or None when it is missing or damaged."""
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


class BadRecord(ValueError):
    """A `<out>.meta.json` whose base or inputs are not what serve writes (edited or damaged)."""


def recorded_base(recorded: dict) -> tuple[str | None, list[str]]:
    """(base, local inputs) of a record. A record written before the base was recorded gets the rule
    that wrote its rows: relative to the one folder classified, else to the folder serve ran in.
    BadRecord when a value is not what serve writes: a wrong guess would file every row under a new key."""
    given = recorded.get("inputs")
    if given is None:
        given = []
    if not isinstance(given, list) or not all(_is_input(t) for t in given):
        raise BadRecord(f"'inputs' is {_shown(given)}, not a list of absolute paths and URLs")
    inputs = [t for t in given if not is_url(t)]
    if "base" in recorded:
        return _folder(recorded, "base"), inputs
    if len(given) == 1 and inputs and os.path.isdir(inputs[0]):
        return inputs[0], inputs
    return _folder(recorded, "cwd"), inputs


def _is_input(value) -> bool:
    return isinstance(value, str) and (is_url(value) or (os.path.isabs(value) and "\0" not in value))


def _folder(recorded: dict, key: str) -> str | None:
    value = recorded.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not os.path.isabs(value) or "\0" in value:
        raise BadRecord(f"'{key}' is {_shown(value)}, not an absolute folder path")
    return value


def _shown(value) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def merged_inputs(earlier: list[str], now: list[str] | tuple[str, ...]) -> list[str]:
    """Every input the output was made from, in first-use order (URLs as given, paths absolute)."""
    return list(dict.fromkeys(t if is_url(t) else os.path.abspath(t) for t in [*earlier, *now]))


class DoneRows:
    """The rows already in a resumed output, matched by spelling and by where the file really is, so a
    symlink (to a file or a folder) never classifies a written image again under the link's spelling.

    A row's real key is its cell for the file's real location, relative to the base's real location. Most
    rows are spelled by their real location already; only rows in a folder reached through a link, or
    named by a file link, get a second key, found once per folder of done rows (one realpath and one
    listing each) and only when the first new image comes: a resume with nothing new reads no folder."""

    def __init__(self, done: set[str], base: str | None, absolute: bool = False):
        self.done, self.base, self.absolute = done, base, absolute
        self.real_base = os.path.realpath(base) if base else None
        self._real_folders: dict[str, str] = {}
        self._aliases: set[str] | None = None
        self.found = 0  # images of this run's inputs found already written (the summary's "skipped")

    def __bool__(self) -> bool:
        return bool(self.done)

    def __len__(self) -> int:
        return len(self.done)

    def has(self, path: str, source: str) -> bool:
        """Whether the image at `source` (its cell: `path`) is already written, under any spelling."""
        found = self._has(path, source)
        self.found += found
        return found

    def _has(self, path: str, source: str) -> bool:
        if path in self.done:
            return True
        if is_url(source):
            return False
        key = self.real_key(source)
        if key != path and key in self.done:
            return True
        if self._aliases is None:
            self._aliases = self._linked_rows()
        return key in self._aliases

    def real_key(self, source: str) -> str:
        folder, name = os.path.split(os.path.abspath(source))
        real_folder = self._real_folders.get(folder)
        if real_folder is None:
            real_folder = self._real_folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(source) if os.path.islink(source) else os.path.join(real_folder, name)
        return row_path(real, self.real_base, self.absolute)

    def _linked_rows(self) -> set[str]:
        """The real keys of done rows spelled through a link (usually none)."""
        folders: dict[str, tuple[str | None, frozenset[str]]] = {}  # a row's folder cell -> _links_in
        for cell in self.done:
            folder = cell[: cell.rfind("/") + 1]
            if folder not in folders and not is_url(cell):
                folders[folder] = self._links_in(folder)
        if not any(real is not None or links for real, links in folders.values()):
            return set()
        aliases = set()
        for cell in self.done:
            cut = cell.rfind("/") + 1
            real, links = folders.get(cell[:cut], (None, frozenset()))
            if cell[cut:] in links:
                aliases.add(self.real_key(resolve_row(cell, self.base) or cell))
            elif real is not None:  # the folder's real key, then the name: no system call per row
                aliases.add(f"{real}/{cell[cut:]}" if real and not real.endswith("/") else real + cell[cut:])
        return aliases

    def _links_in(self, folder_cell: str) -> tuple[str | None, frozenset[str]]:
        """(the folder's real key, "" for the base, when a link leads to it, else None; the names of the
        links it holds). One realpath and one listing."""
        folder = resolve_row(folder_cell, self.base)
        if folder is None:
            return None, frozenset()
        real = row_path(os.path.realpath(folder), self.real_base, self.absolute)
        spelled = folder_cell[:-1] if len(folder_cell) > 1 else folder_cell or "."  # "1/" -> "1", "" -> "."
        moved = None if real == spelled else ("" if real == "." else real)
        try:
            with os.scandir(folder) as entries:
                return moved, frozenset(escape_path(e.name) for e in entries if e.is_symlink())
        except OSError:  # gone or unreadable: no file in it is reached under another name now
            return moved, frozenset()
