"""The path column's escaping: any file name (also non-UTF-8 bytes) becomes printable UTF-8 text, reversibly.

Python holds an undecodable file-name byte 0xNN as the lone surrogate U+DCNN (PEP 383), which no UTF-8
writer accepts. In the path column that byte is written as the four characters `\\xNN`, and a literal
backslash as `\\\\`, so every name round-trips: `unescape_path(escape_path(name)) == name`, and
`os.fsencode(unescape_path(cell))` gives the exact bytes of the name on disk.
"""

from __future__ import annotations

import re

_SURROGATE_OR_BACKSLASH = re.compile("[\\\\\udc80-\udcff]")
_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def escape_path(name: str) -> str:
    """Printable text for the path column; unchanged for every UTF-8 name without a backslash."""
    return _SURROGATE_OR_BACKSLASH.sub(_escape_one, name)


def unescape_path(cell: str) -> str:
    """The file name (a str as os.listdir/os.fsdecode give it) back from a path cell."""
    return _ESCAPE.sub(_unescape_one, cell)


def _escape_one(match: re.Match) -> str:
    ch = match.group()
    return "\\\\" if ch == "\\" else f"\\x{ord(ch) - 0xDC00:02x}"


def _unescape_one(match: re.Match) -> str:
    body = match.group(1)
    return "\\" if body == "\\" else chr(0xDC00 + int(body[1:], 16))
