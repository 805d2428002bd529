"""export_report.json / verify_report.json: what was made, how long it took, how equal and how fast it is."""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from core.fsio import write_json_atomic
from core.model_record import sha256_file


def file_info(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    return {"path": str(path.resolve()), "bytes": size, "mb": round(size / 2**20, 3),
            "sha256": sha256_file(path)}


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"python": sys.version.split()[0], "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu_threads": torch.get_num_threads(), "gpu": gpu}


def new_report(kind: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "status": "running", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **fields, "versions": versions(), "machine": machine(), "times_s": {}, "files": {}, "parity": {},
            "bench": {}}


def write_report(path: Path, report: dict[str, Any]) -> Path:
    write_json_atomic(path, report)
    return path


def parity_line(fmt: str, parity: dict[str, Any]) -> str:
    verdict = "PASS" if parity["passed"] else "FAIL: " + "; ".join(parity["failures"])
    return (f"{fmt}: top-1 agreement {parity['top1_agreement']:.2%}, "
            f"max |Δprob| {parity['max_abs_prob']:.2e}, max |Δlogit| {parity['max_abs_logit']:.2e} "
            f"on {parity['n']} images → {verdict}")


def divergence_lines(parity: dict[str, Any]) -> list[str]:
    """Where a failed gate diverged: the worst image with both sets of logits, and top-1 disagreements."""
    w = parity["worst"]
    lines = [f"worst image: {w['path']} |Δprob| {w['abs_prob']:.3g}",
             f"  torch logits:    {w['torch_logits']}", f"  exported logits: {w['exported_logits']}"]
    lines += [f"  disagrees: {d['path']} torch={d['torch']} exported={d['exported']}"
              for d in parity["disagreements"][:5]]
    return lines
