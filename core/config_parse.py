"""Config text → checked dataclasses: YAML read without aliases, `key=value` overrides, each value
coerced to its declared type and checked (core.config_fields), an unknown key answered with the nearest
valid one. Generic over the root dataclass; core/config.py declares the keys and calls it."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union

import yaml

from core.config_fields import check_value
from core.errors import UserError, clip

# What parsing YAML text can raise: syntax errors, an int past Python's 4300-digit limit (ValueError),
# nesting deeper than the recursive composer can follow (RecursionError).
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without aliases: `*name` repeats a node by reference, so a few lines can expand to
    gigabytes (the "billion laughs"); a config never needs one."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                "YAML aliases (*name) are not allowed in a config; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` → ('train.epochs', 3); the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise UserError(f"override {clip(text)} must look like key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YAML_ERRORS:  # not YAML (or a number past Python's digit limit): the text itself
        value = raw
    return key.strip(), value


def set_dotted(tree: dict[str, Any], key: str, value: Any, root: type) -> None:
    """Put an override's value at its dotted key; a key through a non-mapping is unknown in `root`."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _unknown_key(key, root)
        node = child
    node[parts[-1]] = value


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, full + "."))
    return keys


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {clip(value)}")
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        raise UserError(f"config key '{key}': expected null, got {clip(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}': expected {_type_name(tp)}, got {clip(value)}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string; it means the number
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    elif tp is str and value is False:
        return "off"  # YAML 1.1 reads a bare `off` as false (data.leakage: off)
    raise UserError(
        f"config key '{key}': expected {_type_name(tp)}, got {clip(value)} ({type(value).__name__})"
    )


def _unknown_key(key: str, root: type) -> UserError:
    if len(key) > 100:  # no key is this long: not worth a suggestion (difflib is quadratic)
        return UserError(f"unknown config key {clip(key)}")
    valid = _all_keys(root)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in valid if k.startswith(parent) and "." not in k[len(parent) :]]
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6) or difflib.get_close_matches(
        key, valid, n=1, cutoff=0.6
    )
    if close:
        hint = f"; did you mean '{close[0]}'?"
    else:
        hint = (
            f"; valid keys here: {', '.join(siblings) or ', '.join(f.name for f in dataclasses.fields(root))}"
        )
    return UserError(f"unknown config key '{key}'{hint}")


def build(cls: type, data: dict[str, Any], prefix: str = "", root: type | None = None) -> Any:
    """`cls` from a tree of plain values; `root`: the top config class, whose keys an unknown key is
    matched against (default: `cls`)."""
    root = root or cls
    if not isinstance(data, dict):
        raise UserError(f"config key '{prefix.rstrip('.')}': expected a mapping of keys, got {clip(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in data.items():
        if not isinstance(name, str):  # YAML keys may be numbers, lists, null
            raise UserError(
                f"config key {clip(name)} under '{prefix.rstrip('.') or 'top level'}' is not a name"
            )
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, root)
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value or {}, key + ".", root)
            continue
        kwargs[name] = _coerce(value, tp, key)
        check_value(key, kwargs[name], fields[name].metadata)
    return cls(**kwargs)
