"""The bundle: model.safetensors + bundle.json, everything a later stage needs to rebuild and use a model."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.calibration import CalibrationRecord
from core.errors import UserError
from core.fsio import atomic_dir, write_text_atomic
from core.models import HEAD_ATTR, HeadSpec, build_model
from core.preprocess import EvalSpec
from core.record_checks import check_record_values

SCHEMA_VERSION = 1
BUNDLE_FORMAT = "imgclf-bundle"
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "bundle.json"


@dataclass
class BundleRecord:
    """What bundle.json holds. `classes` are folder names in index order; `display_names` match them."""

    arch: str
    classes: list[str]
    preprocess: EvalSpec
    display_names: list[str] = field(default_factory=list)
    head: HeadSpec = field(default_factory=HeadSpec)
    head_path: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationRecord | None = None  # None (older bundles): T = 1, every row accepted
    schema_version: int = SCHEMA_VERSION
    format: str = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        if not self.display_names:
            self.display_names = list(self.classes)
        if len(self.display_names) != len(self.classes):
            raise ValueError("display_names must have one entry per class")
        check_audit_counts(self.lineage.get("data_audit"))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def threshold(self) -> float | None:
        return self.calibration.threshold if self.calibration else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["num_classes"] = self.num_classes
        if self.calibration is None:  # an uncalibrated record reads exactly as before calibration existed
            d.pop("calibration")
        return {"format": d.pop("format"), "schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "bundle") -> BundleRecord:
        check_schema(d, source)
        check_record_values(d, source)
        try:
            return cls(
                arch=d["arch"],
                classes=list(d["classes"]),
                preprocess=EvalSpec.from_dict(d["preprocess"]),
                display_names=list(d.get("display_names") or []),
                head=HeadSpec(**d.get("head", {})),
                head_path=d.get("head_path", ""),
                metrics=dict(d.get("metrics", {})),
                lineage=dict(d.get("lineage", {})),
                calibration=(
                    None if d.get("calibration") is None else CalibrationRecord.from_dict(d["calibration"])
                ),
                schema_version=int(d["schema_version"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{source}: malformed model record ({type(exc).__name__}: {exc})") from None


def _counts(value: Any) -> list[Any]:
    return [x for v in value.values() for x in _counts(v)] if isinstance(value, dict) else [value]


def check_audit_counts(audit: Any) -> None:
    """lineage.data_audit (train/audit.py's counts; None when the audit was off) holds counts >= 0 only."""
    if audit is None:
        return
    if not isinstance(audit, dict):
        raise ValueError("lineage.data_audit must be a mapping of counts")
    bad = [x for x in _counts(audit) if isinstance(x, bool) or not isinstance(x, int) or x < 0]
    if bad:
        raise ValueError(f"lineage.data_audit counts must be integers >= 0, got {bad[0]!r}")


def check_schema(d: dict[str, Any], source: str) -> None:
    if not isinstance(d, dict):
        raise UserError(f"{source}: the model record is not a JSON object (got {type(d).__name__})")
    if d.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{source} is not an imgclf model record (format={d.get('format')!r})")
    version = d.get("schema_version")
    if not isinstance(version, int):
        raise UserError(f"{source}: model record has no schema_version")
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{source} uses bundle schema v{version}, newer than this imgclf supports "
            f"(v{SCHEMA_VERSION}); upgrade imgclf (pip install -U) to read it"
        )


def load_display_names(classes: list[str], cat_to_name: Path | None) -> list[str]:
    """Display names from cat_to_name.json ({folder: name}); a class missing there keeps its folder name."""
    if cat_to_name is None or not cat_to_name.is_file():
        return list(classes)
    try:
        mapping = json.loads(cat_to_name.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{cat_to_name} is not valid JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise UserError(f"{cat_to_name} must map class folder names to display names")
    return [str(mapping.get(c, c)) for c in classes]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def save_bundle(directory: str | Path, model: torch.nn.Module, record: BundleRecord) -> Path:
    """Write the bundle atomically: `directory` is either the old complete bundle or the new one."""
    model = _unwrap(model)
    record.head_path = getattr(model, HEAD_ATTR, record.head_path)
    record.lineage.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record.lineage.setdefault("torch", torch.__version__)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        (tmp / RECORD_FILE).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    return directory


def write_record(directory: str | Path, record: BundleRecord) -> Path:
    """Replace a bundle's bundle.json atomically (the weights stay): what calibration adds after training."""
    path = resolve_bundle_dir(directory) / RECORD_FILE
    write_text_atomic(path, json.dumps(record.to_dict(), indent=2) + "\n")
    return path


def resolve_bundle_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (RECORD_FILE, WEIGHTS_FILE):
        p = p.parent
    if not p.exists():
        raise UserError(f"bundle not found: {p}")
    if not (p / RECORD_FILE).is_file():
        hint = (
            f"; did you mean {p / 'best'}?"
            if (p / "best" / RECORD_FILE).is_file()
            else " (a bundle is a folder with bundle.json and model.safetensors, e.g. runs/<name>/best)"
        )
        raise UserError(f"{p} is not a model bundle: no {RECORD_FILE}{hint}")
    if not (p / WEIGHTS_FILE).is_file():
        raise UserError(f"{p} is not a complete model bundle: {WEIGHTS_FILE} is missing")
    return p


def read_record(path: str | Path) -> BundleRecord:
    p = resolve_bundle_dir(path)
    try:
        d = json.loads((p / RECORD_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p / RECORD_FILE} is not valid JSON ({exc}); the bundle is damaged") from None
    return BundleRecord.from_dict(d, str(p / RECORD_FILE))


def load_bundle(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, BundleRecord]:
    """Rebuild the trained model from a bundle folder alone. Returns (model in eval mode, record)."""
    p = resolve_bundle_dir(path)
    record = read_record(p)
    model = build_model(record.arch, record.num_classes, record.head, pretrained="none")
    try:
        state = load_file(str(p / WEIGHTS_FILE), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{p / WEIGHTS_FILE} is corrupt or unreadable ({exc}); re-copy or re-train the bundle"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"{p / WEIGHTS_FILE} does not match its record ({record.arch}, "
            f"{record.num_classes} classes): {first}"
        ) from None
    return model.to(map_location).eval(), record
