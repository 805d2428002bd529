"""How a config key is declared and checked: `opt()` (default, one-line help, what is valid), `Range`,
and the one-line reason a value is invalid, shared by the config and the model-record validator."""

from __future__ import annotations

import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from core.errors import CLIP_CHARS, UserError, clip


@dataclass(frozen=True)
class Range:
    """The valid interval of a number (or of each element of a list of numbers); None = unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        above = self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)
        below = self.hi is None or (x < self.hi if self.hi_open else x <= self.hi)
        return above and below

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {num(self.lo)}"
        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


GE0, GE1, GT0 = Range(0), Range(1), Range(0, lo_open=True)
UNIT = Range(0, 1)  # probabilities and fractions
# An image side: past 4096 one crop is 50 MB and a batch of them exhausts memory (a model record read
# by serve/export is held to the same range: core.record_checks).
PIXELS = Range(1, 4096)


def opt(
    default: Any,
    help: str,
    choices: tuple | None = None,
    range: Range | None = None,
    length: int | None = None,
    ordered: bool = False,
) -> Any:
    """A config field: default, one-line help, and what is valid.

    choices: allowed strings; range: the interval a number (each number of a list) must lie in;
    length: exact list length; ordered: a [min, max] list must have min <= max.
    """
    meta = {"help": help, "choices": choices, "range": range, "length": length, "ordered": ordered}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "choices": None})


def valid_text(meta: typing.Mapping[str, Any]) -> str:
    """What a key accepts, e.g. `[0, 1)`, `auto or >= 0`, `2 values in (0, 1], min <= max`."""
    options = [", ".join(meta.get("choices") or ()), str(meta["range"]) if meta.get("range") else ""]
    text = " or ".join(o for o in options if o)
    if meta.get("length"):
        text = f"{meta['length']} values" + (f" in {text}" if text else "")
    if meta.get("ordered"):
        text += ", min <= max"
    return text


def check_value(key: str, value: Any, meta: typing.Mapping[str, Any]) -> None:
    """Choices, range, list length and order as declared by opt(); one line naming key, value and what is valid."""
    problem = value_problem(value, meta)
    if problem:
        raise UserError(f"config key '{key}': {problem}")


def value_problem(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    """What is wrong with `value` for a field declared with opt() (`meta`), or None: shared by the config
    and the model-record validator (core.record_checks), so a range is written once."""
    choices, rng = meta.get("choices"), meta.get("range")
    numbers = value if isinstance(value, list) else [value]
    numeric = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
    bad = (
        (isinstance(value, str) and choices and value not in choices)
        or (rng is not None and any(v not in rng for v in numeric))
        or (meta.get("length") is not None and len(numbers) != meta["length"])
        or (meta.get("ordered") and len(numeric) == 2 and numeric[0] > numeric[1])
    )
    if not bad:
        return None
    hint = ""
    if isinstance(value, str) and choices:
        close = difflib.get_close_matches(value[:CLIP_CHARS], choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
    shown = clip(value) if isinstance(value, str) else json.dumps(value)
    shown = shown if len(shown) <= CLIP_CHARS else shown[: CLIP_CHARS - 1] + "…"
    return f"invalid value {shown}{hint}; valid: {valid_text(meta)}"
