"""export_report.json / verify_report.json: what was made, how long it took, how equal and how fast it is."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.fsio import write_json_atomic
from core.model_record import sha256_file


def file_info(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    return {
        "path": str(path.resolve()),
        "bytes": size,
        "mb": round(size / 2**20, 3),
        "sha256": sha256_file(path),
    }


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu_threads": torch.get_num_threads(), "gpu": gpu}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class ExportReport:
    """export_report.json (kind "export") and verify_report.json (kind "verify"), field for field.

    Filled in as the pipeline runs and written once at the end; a field that does not apply to the kind
    stays None and is left out of the file.
    """

    kind: str  # "export" or "verify"
    bundle: str
    inputs: dict[str, Any]  # Samples.describe() of the gate images
    status: str = "running"  # then "passed" or "failed"
    created: str = field(default_factory=_now)
    out: str | None = None  # export: the output folder
    onnx: str | None = None  # verify: the file checked
    precisions: list[str] | None = None  # export: the variants asked for
    int8_calibration: dict[str, Any] | None = None  # export with int8: Samples.describe() of the set
    export: dict[str, Any] | None = None  # the ONNX export facts (verify: those of the file checked)
    # looked up at each report, not bound once, so a test can stand in for the machine
    versions: dict[str, str] = field(default_factory=lambda: versions())
    machine: dict[str, Any] = field(default_factory=lambda: machine())
    times_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file name → file_info()
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)  # "onnx", "onnx.fp16", …, "tensorrt"
    bench: dict[str, dict[str, Any]] = field(default_factory=dict)  # runner name → bench_all() figures
    tensorrt: dict[str, Any] | None = None  # the engine build facts
    variants: dict[str, dict[str, Any]] | None = None  # export: variant_table()
    failed_variants: list[str] | None = None  # export: the variants left out
    failed_format: str | None = None  # a gate that stopped the whole run ("onnx": fp32)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def write(self, path: Path) -> Path:
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path: Path) -> ExportReport:
        """A report written by write(); keys this version does not know are ignored."""
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the export report {path} ({exc})") from None
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError:  # a required field is missing: some other JSON file
            raise UserError(f"{path} is not an export or verify report") from None


def _num(value: float | None, spec: str) -> str:
    """A figure for a log line; None stands for a non-finite one (verify never stores NaN)."""
    return "NaN/Inf" if value is None else format(value, spec)


def parity_line(fmt: str, parity: dict[str, Any]) -> str:
    verdict = "PASS" if parity["passed"] else "FAIL: " + "; ".join(parity["failures"])
    return (
        f"{fmt}: top-1 agreement {parity['top1_agreement']:.2%}, "
        f"max |Δprob| {_num(parity['max_abs_prob'], '.2e')}, max |Δlogit| {_num(parity['max_abs_logit'], '.2e')} "
        f"on {parity['n']} images → {verdict}"
    )


def divergence_lines(parity: dict[str, Any]) -> list[str]:
    """Where a failed gate diverged: the worst image with both sets of logits, and top-1 disagreements."""
    w = parity["worst"]
    lines = [
        f"worst image: {w['path']} |Δprob| {_num(w['abs_prob'], '.3g')}",
        f"  torch logits:    {w['torch_logits']}",
        f"  exported logits: {w['exported_logits']}",
    ]
    lines += [
        f"  disagrees: {d['path']} torch={d['torch']} exported={d['exported']}"
        for d in parity["disagreements"][:5]
    ]
    return lines


def _row(parity: dict[str, Any] | None, speed: dict[str, Any] | None, status: str) -> dict[str, Any]:
    row: dict[str, Any] = {"status": status}
    if parity:
        acc = parity.get("accuracy") or {}
        row.update(
            top1_agreement=parity["top1_agreement"],
            max_abs_prob=parity["max_abs_prob"],
            accuracy_torch=acc.get("torch"),
            accuracy=acc.get("exported"),
            accuracy_delta_points=None if not acc else round(acc["delta"] * 100, 3),
            gate=parity["gate"],
            failures=parity["failures"],
        )
    if speed:
        row.update(images_per_s=speed["best_images_per_s"], vs_onnx_fp32=speed.get("vs_onnx_fp32"))
    return row


def variant_table(
    report: ExportReport, asked: tuple[str, ...], failed: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """One row per format: gate figures against torch fp32, the verdict, and speed relative to ONNX fp32."""
    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    table = {"torch fp32": _row(None, report.bench.get("torch fp32"), "reference")}
    for p, name in files.items():
        key = "onnx" if p == "fp32" else f"onnx.{p}"
        if key not in report.parity:
            continue
        status = "failed" if p in failed else ("written" if p in asked else "checked (base of the others)")
        table[f"onnx {p}"] = {
            "file": name,
            **_row(report.parity[key], report.bench.get(f"onnx {p}"), status),
        }
    if "tensorrt" in report.parity or "tensorrt" in failed:
        status = "failed" if "tensorrt" in failed else "written"
        table["tensorrt"] = {
            "file": "model.engine",
            **_row(report.parity.get("tensorrt"), report.bench.get("tensorrt"), status),
        }
    return table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def table_lines(table: dict[str, Any]) -> list[str]:
    """The variant table as aligned text for the log."""
    lines = [
        f"{'format':<12} {'status':<10} {'top-1 agree':>11} {'accuracy':>9} {'Δacc pts':>8} "
        f"{'img/s':>8} {'×onnx fp32':>10}"
    ]
    for name, r in table.items():
        delta = r.get("accuracy_delta_points")
        speed = r.get("images_per_s")
        ratio = r.get("vs_onnx_fp32")
        lines.append(
            f"{name:<12} {r['status'].split(' ')[0]:<10} {_pct(r.get('top1_agreement')):>11} "
            f"{_pct(r.get('accuracy', r.get('accuracy_torch'))):>9} "
            f"{'-' if delta is None else f'{delta:+.2f}':>8} "
            f"{'-' if speed is None else f'{speed:.0f}':>8} {'-' if ratio is None else f'{ratio:.2f}':>10}"
        )
    return lines
