"""Validate a model record's values when it is read (bundle.json, model.onnx metadata, engine sidecar).

A record comes from a file anyone can edit: a crop of 60000 would allocate gigabytes, an unknown
interpolation or duplicate class names would give tracebacks or wrong columns. The preprocessing
ranges are the training config's own declarations (core.config), so the two can never disagree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.config import PreprocessConfig
from core.config_fields import value_problem
from core.errors import UserError, clip

TOPK_SEPARATOR = "|"  # joins top-k labels in one predictions-CSV cell: no class name may hold it
PREPROCESS_FIELDS = {f.name: f.metadata for f in dataclasses.fields(PreprocessConfig)}
FIELD_TYPES = {"resize": int, "crop": int, "interpolation": str, "mean": list, "std": list}


def check_record_values(d: Any, source: str) -> None:
    """One UserError naming the first bad value; a record that passes builds a BundleRecord safely."""
    if not isinstance(d, dict):
        raise UserError(f"{source}: the model record is not a JSON object (got {type(d).__name__})")
    _check_classes(d, source)
    pre = d.get("preprocess")
    if not isinstance(pre, dict):
        raise UserError(f"{source}: model record 'preprocess' is not an object (got {clip(pre)})")
    for name, meta in PREPROCESS_FIELDS.items():
        if name not in pre and name == "interpolation":
            continue  # older records: bilinear
        value = pre.get(name)
        if not _is(value, FIELD_TYPES[name]):
            raise UserError(
                f"{source}: model record preprocess.{name} is {clip(value)}, not a {FIELD_TYPES[name].__name__}"
            )
        problem = value_problem(value, meta)
        if problem:
            raise UserError(
                f"{source}: model record preprocess.{name}: {problem}; the record is damaged or hand-edited"
            )
    if pre["crop"] > pre["resize"]:
        raise UserError(
            f"{source}: model record preprocess.crop ({pre['crop']}) is larger than resize ({pre['resize']})"
        )
    if not isinstance(d.get("head", {}), dict):
        raise UserError(f"{source}: model record 'head' is not an object (got {clip(d.get('head'))})")


def check_class_names(classes: list[str], where: str) -> None:
    """Training refuses a class name holding the top-k separator: serve's top-k cells would be ambiguous."""
    bad = [c for c in classes if TOPK_SEPARATOR in c]
    if bad:
        raise UserError(
            f"class folder {clip(bad[0])} in {where} contains '{TOPK_SEPARATOR}', the separator of the "
            f"predictions' top-k column; rename the folder (e.g. replace '{TOPK_SEPARATOR}' with '_')"
        )


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, list) and all(_is(v, float) for v in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_classes(d: dict, source: str) -> None:
    classes, names = d.get("classes"), d.get("display_names") or []
    for key, values in (("classes", classes), ("display_names", names)):
        if not isinstance(values, list) or not all(isinstance(c, str) for c in values):
            raise UserError(f"{source}: model record '{key}' is not a list of names (got {clip(values)})")
    if not classes:
        raise UserError(f"{source}: model record lists no classes")
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise UserError(
                f"{source}: model record lists class {clip(c)} twice; its columns would be ambiguous"
            )
        seen.add(c)
    if names and len(names) != len(classes):
        raise UserError(f"{source}: model record has {len(names)} display names for {len(classes)} classes")
