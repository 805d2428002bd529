"""What produced a predictions file, kept beside it in `<out>.meta.json`, so --resume only continues the
same job: the same model (sha256 of its file, or of a bundle's weights and record), top-k, probability
columns, format and path style. The CSV itself stays plain (no comment lines) for every CSV reader.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from core.bundle import RECORD_FILE, WEIGHTS_FILE, resolve_bundle_dir
from core.errors import UserError
from core.fsio import write_json_atomic
from core.model_record import sha256_file
from serve.row_paths import merged_inputs, meta_path, read_record

MUST_MATCH = {
    "model_sha256": "model",
    "topk": "--topk",
    "probs": "--probs/--evaluate",
    "format": "--format",
    "absolute": "--absolute",
    "threshold": "acceptance threshold (--accept-above, else the model's)",
}


def model_sha256(model: str | Path) -> str:
    p = Path(model)
    if p.is_dir() or p.name in (RECORD_FILE, WEIGHTS_FILE):
        folder = resolve_bundle_dir(p)
        parts = (sha256_file(folder / WEIGHTS_FILE), sha256_file(folder / RECORD_FILE))
        return hashlib.sha256(" ".join(parts).encode()).hexdigest()
    return sha256_file(p)


def job_identity(
    model: str | Path,
    topk: int,
    probs: bool,
    fmt: str,
    absolute: bool,
    inputs: Sequence[str] = (),
    threshold: float | None = None,
    base: str | None = None,
) -> dict[str, Any]:
    """`base` is the folder the rows' paths are relative to (serve.row_paths), so any reader of the
    predictions (resume, the sort command, --evaluate) finds a row's file; `inputs` are every input the
    file was made from (the sort command refuses to sort into one of them)."""
    return {
        "model_sha256": model_sha256(model),
        "topk": topk,
        "probs": probs,
        "format": fmt,
        "absolute": absolute,
        "threshold": threshold,  # the `accepted` column's meaning; an older file's record lacks it (None)
        "model": str(model),
        "serve_version": _version(),
        "inputs": merged_inputs([], inputs),
        "base": base,
        "cwd": os.getcwd(),
    }


def _version() -> str:
    try:
        return metadata.version("imgclf")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    try:
        write_json_atomic(meta_path(out), identity)
    except OSError as exc:
        raise UserError(
            f"cannot write {meta_path(out)} ({exc.strerror or exc}); choose another --out"
        ) from None


def check_same_job(out: Path, identity: dict[str, Any]) -> bool:
    """Refuse to resume `out` when its recorded job differs, or when no record ties it to a model: without
    one, rows of two models could mix in one file. True when the record matches."""
    path = meta_path(out)
    if not path.is_file():
        raise UserError(
            f"--resume: {out} has no {path.name}, so nothing ties its rows to a model and resuming could mix "
            "two models' labels; restore that file, or pass --overwrite to classify again"
        )
    recorded = read_record(path)
    if recorded is None:
        raise UserError(
            f"{path} is damaged, so --resume cannot tell what wrote {out.name}; "
            "pass --overwrite to start again, or choose another --out"
        )
    differs = [
        _difference(key, recorded, identity) for key in MUST_MATCH if recorded.get(key) != identity[key]
    ]
    if differs:
        raise UserError(
            f"--resume: {out} was written by another job ({'; '.join(differs)}); pass --overwrite "
            "to replace it, or choose another --out"
        )
    return True


def _difference(key: str, recorded: dict[str, Any], identity: dict[str, Any]) -> str:
    was, now = recorded.get(key), identity[key]
    if key == "model_sha256":
        return (
            f"model {recorded.get('model', '?')} (sha256 {str(was)[:12]}) there, "
            f"{identity['model']} (sha256 {now[:12]}) now"
        )
    return f"{MUST_MATCH[key]} {was} there, {now} now"
