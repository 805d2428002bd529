"""`imgclf-export` flags → a checked, frozen ExportJob. No torch here: --help and flag mistakes are instant."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.help_format import DefaultsHelpFormatter
from export import variants as var

TRT_ONLY = ("engine_from", "opt_batch", "workspace_gb", "timing_cache")
INT8_ONLY = ("calib_images", "calib_max", "max_int8_drop", "int8_activations")
CALIB_MAX, MAX_INT8_DROP, WORKSPACE_GB = 512, 1.0, 4.0
# The heavy modules' option names, here so --help needs no torch (tests/test_fast_help keeps them equal)
EXPORTERS, DEFAULT_EXPORTER, OPSET = ("dynamo", "torchscript"), "dynamo", 18  # export.onnx_export
PROVIDERS, PRECISIONS = (
    ("cpu", "cuda", "tensorrt"),
    ("fp32", "fp16", "int8"),
)  # export.verify PROVIDERS, GATES


@dataclass(frozen=True)
class ExportJob:
    """One export (or --verify-only) as asked, every default filled in and every flag combination checked."""

    source: Path  # the bundle folder (or a file inside it); with verify_only, the ONNX file
    out: Path | None  # None: <bundle>/../export, or beside the ONNX with verify_only
    precisions: tuple[str, ...]  # canonical order; includes engine_from when tensorrt
    images: Path | None
    max_images: int
    exporter: str
    opset: int
    probs: bool
    provider: str
    allow_cpu: bool
    max_batch: int
    threads: int | None
    bench: bool
    verify_only: bool
    bundle: Path | None  # verify_only: the bundle to compare against
    calib_images: Path | None
    calib_max: int
    max_int8_drop: float
    int8_activations: str
    tensorrt: bool
    engine_from: str | None  # set exactly when tensorrt
    opt_batch: int | None
    workspace_gb: float
    timing_cache: Path | None  # None: <out>/timing.cache


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgclf-export",
        description="bundle → model.onnx (+ fp16/int8 variants, TensorRT engine), each kept only\n"
        "if it gives PyTorch's answers on real images.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("source", help="bundle folder (runs/<name>/best), or model.onnx with --verify-only")
    p.add_argument("--out", help="output folder (default <bundle>/../export; --verify-only: beside the ONNX)")
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma list of fp32, fp16, int8: model.onnx, "
        "model.fp16.onnx, model.int8.onnx, each gated on real images",
    )
    p.add_argument("--images", help="real images for the gate (default: the bundle's valid_dir)")
    p.add_argument("--max-images", type=int, default=256, help="cap on gate images, evenly spaced")
    p.add_argument(
        "--exporter",
        choices=sorted(EXPORTERS),
        default=DEFAULT_EXPORTER,
        help="torch.onnx path; on failure the other is suggested, not used",
    )
    p.add_argument("--opset", type=int, default=OPSET, help="ONNX opset")
    p.add_argument("--probs", action="store_true", help="add a softmax output 'probs' beside 'logits'")
    p.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="onnxruntime execution provider for the gate and speed check",
    )
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="accept onnxruntime running on CPU when the "
        "asked provider is unavailable (recorded in the report)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="largest batch checked; TensorRT profile max",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch and onnxruntime in the gate and speed "
        "check (default: torch's; pass serve's --threads to predict serve)",
    )
    p.add_argument("--no-bench", action="store_true", help="skip the speed check")
    p.add_argument("--verify-only", action="store_true", help="re-run the gate on an existing ONNX file")
    p.add_argument(
        "--bundle",
        help="with --verify-only: the bundle to compare against (default: the one "
        "recorded in the ONNX export facts)",
    )
    q = p.add_argument_group("int8 (--precision ...,int8)")
    q.add_argument("--calib-images", help="calibration images (default: the bundle's train_dir)")
    q.add_argument("--calib-max", type=int, help=f"cap on calibration images (default {CALIB_MAX})")
    q.add_argument(
        "--max-int8-drop",
        type=float,
        help=f"accuracy points int8 may lose on the labelled gate images (default {MAX_INT8_DROP:g})",
    )
    q.add_argument(
        "--int8-activations",
        choices=var.ACTIVATIONS,
        help="uint8: fastest on onnxruntime's x86 "
        "CPU (default); int8 (symmetric): what TensorRT needs (default with --engine-from int8)",
    )
    trt = p.add_argument_group("TensorRT")
    trt.add_argument("--tensorrt", action="store_true", help="also build model.engine (pip install '.[gpu]')")
    trt.add_argument(
        "--engine-from",
        choices=list(var.FILES),
        help="the ONNX variant the engine is built "
        "from, as a strongly typed network (default fp16; added to --precision if missing)",
    )
    trt.add_argument("--opt-batch", type=int, help="profile opt batch (default: --max-batch)")
    trt.add_argument(
        "--workspace-gb", type=float, help=f"builder workspace limit in GiB (default {WORKSPACE_GB:g})"
    )
    trt.add_argument("--timing-cache", help="timing cache, reused across builds (default <out>/timing.cache)")
    return p


# ── checks ───────────────────────────────────────────────────────────────────────────────────────────


def _stray(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    return [f"--{k.replace('_', '-')}" for k in names if getattr(args, k) is not None]


def _precisions(args: argparse.Namespace, engine_from: str | None) -> tuple[str, ...]:
    """--precision as a list in canonical order, plus the engine's source variant."""
    asked = var.parse_precisions(args.precision)
    if engine_from and engine_from not in asked:
        asked = var.parse_precisions(",".join([*asked, engine_from]))
    return tuple(asked)


def _int8_activations(args: argparse.Namespace, engine_from: str | None) -> str:
    if engine_from == "int8" and args.int8_activations == "uint8":
        raise UserError(
            "TensorRT takes only symmetric int8 activations: drop --int8-activations uint8 "
            "or build the engine from another variant (--engine-from fp16)"
        )
    return args.int8_activations or ("int8" if engine_from == "int8" else "uint8")


def _check_combinations(args: argparse.Namespace) -> None:
    if _stray(args, TRT_ONLY) and not args.tensorrt:
        raise UserError(f"{', '.join(_stray(args, TRT_ONLY))} only apply with --tensorrt")
    if args.verify_only and (args.tensorrt or args.probs):
        raise UserError("--verify-only checks an existing ONNX file; drop --tensorrt/--probs")
    if args.bundle and not args.verify_only:
        raise UserError("--bundle only applies with --verify-only (export takes the bundle as its argument)")


def _check_numbers(job: ExportJob) -> None:
    for flag in ("max_images", "max_batch", "calib_max", "threads"):
        value = getattr(job, flag)
        if value is not None and value < 1:  # not `or 1`: 0 is a mistake too
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if job.max_int8_drop < 0:
        raise UserError("--max-int8-drop is in accuracy points and cannot be negative (e.g. 1 for one point)")
    if job.workspace_gb <= 0:
        raise UserError("--workspace-gb must be above 0 (GiB of builder workspace, e.g. 4)")
    if job.opt_batch is not None and not 1 <= job.opt_batch <= job.max_batch:
        raise UserError(f"--opt-batch must be between 1 and --max-batch ({job.max_batch})")


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def to_job(args: argparse.Namespace) -> ExportJob:
    """Check the parsed flags together and fill in the defaults that depend on other flags."""
    _check_combinations(args)
    engine_from = (args.engine_from or "fp16") if args.tensorrt else None
    precisions = _precisions(args, engine_from)
    if "int8" not in precisions and not args.verify_only and _stray(args, INT8_ONLY):
        raise UserError(f"{', '.join(_stray(args, INT8_ONLY))} only apply with --precision ...,int8")
    job = ExportJob(
        source=Path(args.source),
        out=_path(args.out),
        precisions=precisions,
        images=_path(args.images),
        max_images=args.max_images,
        exporter=args.exporter,
        opset=args.opset,
        probs=args.probs,
        provider=args.provider,
        allow_cpu=args.allow_cpu,
        max_batch=args.max_batch,
        threads=args.threads,
        bench=not args.no_bench,
        verify_only=args.verify_only,
        bundle=_path(args.bundle),
        calib_images=_path(args.calib_images),
        calib_max=CALIB_MAX if args.calib_max is None else args.calib_max,
        max_int8_drop=MAX_INT8_DROP if args.max_int8_drop is None else args.max_int8_drop,
        int8_activations=_int8_activations(args, engine_from),
        tensorrt=args.tensorrt,
        engine_from=engine_from,
        opt_batch=args.opt_batch,
        workspace_gb=WORKSPACE_GB if args.workspace_gb is None else args.workspace_gb,
        timing_cache=_path(args.timing_cache),
    )
    _check_numbers(job)
    return job


def parse(argv: list[str] | None = None) -> ExportJob:
    return to_job(build_parser().parse_args(argv))
