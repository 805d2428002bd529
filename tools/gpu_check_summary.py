"""The verdict side of tools/gpu_check.py, free of torch and of the steps: which skips a GPU run allows,
which steps run, the speed targets (met / missed, apart from pass / fail) and the last line."""

from __future__ import annotations

import sys
from pathlib import Path

# The only gpu tests allowed to skip on a CUDA machine: the GPU box has no TensorRT and a CPU-only onnxruntime.
ALLOWED_SKIPS = ("tensorrt not installed", "onnxruntime here is the CPU-only wheel")
NO_PYTEST = "PYTEST IS NOT INSTALLED: no gpu test ran (pip install pytest, or carry a venv that has it)"


def disallowed_skips(text: str) -> list[str]:
    """The `-rs` lines (`SKIPPED [n] file:line: reason`) of skips that are not in ALLOWED_SKIPS."""
    lines = [line for line in text.splitlines() if line.startswith("SKIPPED")]
    return [line for line in lines if not any(ok in line for ok in ALLOWED_SKIPS)]


def summary_parts(line: str) -> list[str]:
    """'3 passed, 2 skipped, 400 deselected in 9.1s' → ['3 passed', '2 skipped', '400 deselected']."""
    parts = [p.strip() for p in line.strip("= ").split(" in ")[0].split(",")]
    return [p for p in parts if len(p.split()) == 2 and p.split()[0].isdigit()]


DEFAULT_BUDGET_S = 480.0  # the whole check on one H100, so a 600 s limit leaves room
OPTIONAL = {"train_bench_compile"}  # run only when --only names them: compiling resnet50 takes ~1-2 minutes


def select(plan: list, only: str | None) -> list:
    """--only picks steps by name (optional ones included); without it, every step but the optional ones."""
    if not only:
        return [st for st in plan if st.name not in OPTIONAL]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - {st.name for st in plan})
    if unknown:  # a user error: one line, exit 2
        valid = ", ".join(st.name for st in plan)
        print(f"gpu_check: unknown step(s) {', '.join(unknown)}; valid: {valid}", file=sys.stderr)
        raise SystemExit(2)
    return [st for st in plan if st.name in names]


# issue 9's targets on one H100/H200 (checked only in a real GPU run)
TARGETS = {
    "train resnet50 GPU feed img/s >= 5000": ("train_bench_resnet50", ("resnet50", "rows", "gpu"), 5000),
    "train resnet50 gpu/model >= 0.9": ("train_bench_resnet50", ("resnet50", "ratios", "gpu/model"), 0.9),
    "train densenet161 frozen img/s >= 2500": ("train_bench_densenet", ("densenet161", "rows", "gpu"), 2500),
    "train densenet161 gpu/tutorial >= 5": (
        "train_bench_densenet",
        ("densenet161", "ratios", "gpu/tutorial"),
        5,
    ),
    "serve resnet50 end-to-end img/s >= 8000": ("serve_bench", ("images_per_s", "end_to_end"), 8000),
    "train resnet50 compiled GPU feed img/s >= 5000": (
        "train_bench_compile",
        ("resnet50", "rows", "gpu"),
        5000,
    ),
}


def _figure(figures: dict, path: tuple[str, ...]):
    value = figures
    for key in path:
        if isinstance(value, list):  # bench rows: [{"path": "gpu", "images_per_s": ...}, ...]
            value = next((r.get("images_per_s") for r in value if r.get("path") == key), None)
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def check_targets(figures_by_step: dict[str, dict]) -> dict:
    by_name = figures_by_step
    result = {}
    for label, (step, path, bound) in TARGETS.items():
        value = _figure(by_name.get(step, {}), path)
        result[label] = {"value": value, "met": None if value is None else bool(value >= bound)}
    return result


def last_line(summary: dict, out: Path) -> str:
    statuses = [s["status"] for s in summary["steps"]]
    counts = ", ".join(f"{statuses.count(k)} {k}" for k in dict.fromkeys(statuses))
    met = [t["met"] for t in summary["targets"].values()]
    targets = (
        f"speed targets: {met.count(True)} met, {met.count(False)} missed, {met.count(None)} not measured"
        if summary["targets"]
        else "speed targets: not checked (smoke run)"
    )
    verdict = "OK" if summary["ok"] else "FAILED"
    return f"gpu_check: {verdict} in {summary['total_s']} s ({counts}); {targets}; {out / 'summary.json'}"
