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


def read_record(meta: Path) -> dict | None:
    """The JSON object in `<out>.meta.json`, or None when it is missing or damaged."""
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def recorded_base(recorded: dict) -> tuple[str | None, list[str]]:
    """(base, local inputs) of a record. A record written before the base was recorded gets the rule
    that wrote its rows: relative to the one folder classified, else to the folder serve ran in."""
    inputs = [str(p) for p in recorded.get("inputs") or [] if not is_url(str(p))]
    if "base" in recorded:
        base = recorded["base"]
        return (str(base) if base else None), inputs
    if len(recorded.get("inputs") or []) == 1 and inputs and os.path.isdir(inputs[0]):
        return inputs[0], inputs
    cwd = recorded.get("cwd")
    return (str(cwd) if cwd else None), inputs


def merged_inputs(earlier: list[str], now: list[str] | tuple[str, ...]) -> list[str]:
    """Every input the output was made from, in first-use order (URLs as given, paths absolute)."""
    return list(dict.fromkeys(t if is_url(t) else os.path.abspath(t) for t in [*earlier, *now]))
