"""The config reference printed by `python -m core.config`: grouped for a terminal, or (`--markdown`) the
table the README carries. Read from the declarations in core/config.py, so it cannot drift from them."""

from __future__ import annotations

import dataclasses
import json
import typing

from core.config import Config
from core.config_fields import valid_text


def _reference_rows() -> list[tuple[str, str, str, str, str]]:
    """(section, key, default, valid, help) for every leaf key, in declaration order."""
    rows = []

    def walk(cls: type, prefix: str, top: str) -> None:
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.", top or f"{f.name}: {f.metadata['help']}")
                continue
            rows.append(
                (
                    top,
                    f"{prefix}{f.name}",
                    json.dumps(getattr(inst, f.name)),
                    valid_text(f.metadata),
                    f.metadata["help"],
                )
            )

    walk(Config, "", "")
    return rows


def reference_markdown() -> str:
    """The config reference table (every key, default, valid values, meaning) for the README."""
    lines = ["| key | default | valid | meaning |", "|---|---|---|---|"]
    for _, key, default, valid, help_text in _reference_rows():
        lines.append(
            f"| `{key}` | `{default}` | {valid.replace('|', chr(92) + '|')} | "
            f"{help_text.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(lines)


def reference_text(width: int = 100) -> str:
    """The same reference for a terminal: grouped by section, help wrapped to `width` columns."""
    import textwrap

    out: list[str] = []
    section = None
    for top, key, default, valid, help_text in _reference_rows():
        if top != section:
            section = top
            out += ["", top]
        out.append(f"  {key} = {default}" + (f"    valid: {valid}" if valid else ""))
        out += textwrap.wrap(
            help_text, width=max(40, width), initial_indent=" " * 6, subsequent_indent=" " * 6
        )
    return "\n".join(out[1:])


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import shutil
    import sys

    ap = argparse.ArgumentParser(
        prog="python -m core.config", description="Print every config key: default, valid values, meaning."
    )
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table the README carries")
    args = ap.parse_args(argv)
    try:
        print(reference_markdown() if args.markdown else reference_text(shutil.get_terminal_size().columns))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` closed the pipe: that is the reader's choice, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second failure at exit
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
