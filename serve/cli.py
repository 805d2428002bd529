"""serve's command line, torch-free: flags → checks → a frozen ServeJob (serve/run.py runs it).

Every flag is checked here, before torch is imported, so a mistake costs no import time.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from serve.accept import check_accept_above
from serve.budget import MAX_INFLIGHT_MB
from serve.discover import MAX_FILE_MB, check_inputs, is_url
from serve.model_file import model_kind, resolve_model
from serve.writer import FORMATS

USAGE = """examples:
  imgclf-serve runs/flowers/best data/incoming --out predictions.csv
  accelerate launch --num_processes 8 -m serve.main model.onnx /data/millions --out preds.csv
"""


@dataclass(frozen=True)
class ServeJob:
    """One serve run, checked. `probs` is already on with --evaluate (it needs every class's column)."""

    model: Path  # a bundle folder, model.onnx or model.engine (bundle.json/model.safetensors → the folder)
    inputs: tuple[str, ...]
    out: Path | None  # None only with show
    fmt: str
    topk: int = 5
    probs: bool = False
    absolute: bool = False
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    providers: tuple[str, ...] | None = None
    allow_cpu: bool = False
    batch_size: int | None = None  # None: by device (serve/run.py)
    workers: int | None = None  # None: by cores (serve/run.py)
    threads: int | None = None  # None: the CPUs left after the workers
    read_threads: int = 8
    timeout: float = 10.0
    max_bytes: int = MAX_FILE_MB * 2**20
    max_inflight_bytes: int = MAX_INFLIGHT_MB * 2**20  # serve.budget
    limit: int | None = None
    throttle: float = 0.0
    progress: bool = True
    evaluate: bool = False
    eval_dir: Path | None = None  # set when evaluate
    show: bool = False
    figure: Path | None = None  # set when show
    accept_above: float | None = None  # None: the model's calibrated threshold (serve/accept.py)
    embeddings: Path | None = None  # FILE.npy for the ok rows' penultimate features (torch bundles)


class _Defaults(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help: argparse's `(default: X)` for a value, the help text's own words where
    the default is decided at run time (None) and nothing for an off switch."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgclf-serve",
        description="Classify folders, files and URLs with a bundle, model.onnx or model.engine into a "
        "streaming, resumable CSV.",
        epilog=USAGE,
        formatter_class=_Defaults,
    )
    p.add_argument(
        "model", help="bundle folder (runs/<name>/best, or its model.safetensors), model.onnx or model.engine"
    )
    p.add_argument("inputs", nargs="+", help="folders (recursive), image files and/or http(s) URLs")
    p.add_argument("--out", help="predictions file (.csv, or .jsonl); optional with --show (default: none)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's suffix, else csv)")
    p.add_argument("--topk", type=int, default=5, help="how many top classes per row (columns top<K>_*)")
    p.add_argument("--probs", action="store_true", help="add one prob_<label> column per class")
    p.add_argument(
        "--absolute",
        action="store_true",
        help="absolute paths instead of relative to the output's base folder",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="skip paths already in --out and append the rest")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where the model runs")
    p.add_argument(
        "--providers",
        help="onnxruntime providers in priority order, e.g. tensorrt,cuda,cpu (default: CUDA on a GPU, else CPU)",
    )
    p.add_argument(
        "--allow-cpu",
        action="store_true",
        help="with onnxruntime's CUDA provider: CPU kernels may take what CUDA cannot, and a CUDA "
        "provider that failed to start is accepted",
    )
    p.add_argument("--batch-size", type=int, help="images per model call (default: 256 on GPU, 32 on CPU)")
    p.add_argument(
        "--workers",
        type=int,
        help="CPU decoding processes per GPU/process (0: decode inline; default: by cores)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="model threads, torch and onnxruntime (default: the usable CPUs left after the decode workers, "
        "at least 1)",
    )
    p.add_argument("--read-threads", type=int, default=8, help="file/URL reading threads")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds a URL fetch may take in all (connect, headers, body) before its row is an error",
    )
    p.add_argument(
        "--max-file-mb",
        type=float,
        default=MAX_FILE_MB,
        help="larger files and downloads get an error row, unread",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=float,
        default=MAX_INFLIGHT_MB,
        help="bytes read but not yet decoded, across all reading threads and decode workers, wait "
        "below this (one larger file still goes through alone)",
    )
    p.add_argument("--limit", type=int, help="classify at most N new images (default: all)")
    p.add_argument(
        "--throttle", type=float, default=0.0, help="pause N seconds after each batch (shared disks)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="input is a labelled folder: also write accuracy, per-class accuracy, confusion matrix",
    )
    p.add_argument(
        "--accept-above",
        type=float,
        metavar="P",
        help="`accepted` = top-1 probability >= P (default: the model's calibrated threshold; 0 accepts all)",
    )
    p.add_argument(
        "--embeddings",
        metavar="FILE.npy",
        help="also write the penultimate features of every ok row, in row order, to FILE.npy (paths in "
        "FILE.paths.json); a bundle model only",
    )
    p.add_argument("--eval-dir", help="where --evaluate writes (default: <out stem>_eval/ beside --out)")
    p.add_argument("--show", action="store_true", help="one image: print top-k and save the top-k figure")
    p.add_argument("--figure", help="--show figure path (default: <image name>_topk.png)")
    return p


def parse(argv: list[str] | None = None) -> ServeJob:
    """The job the command line asks for; a mistake is one UserError (argparse's own exit 2 for syntax)."""
    args = build_parser().parse_args(argv)
    check_args(args)
    check_inputs(args.inputs)
    out = Path(args.out) if args.out else None
    model = resolve_model(args.model)
    if args.providers and model_kind(model) != "onnx":
        raise UserError(f"--providers applies to onnxruntime only (a model.onnx file), not {model}")
    return ServeJob(
        model=model,
        inputs=tuple(args.inputs),
        out=out,
        fmt=output_format(args.format, out),
        topk=args.topk,
        probs=args.probs or args.evaluate,
        absolute=args.absolute,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip())
        if args.providers
        else None,
        allow_cpu=args.allow_cpu,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        read_threads=args.read_threads,
        timeout=args.timeout,
        max_bytes=int(args.max_file_mb * 2**20),
        max_inflight_bytes=int(args.max_inflight_mb * 2**20),
        limit=args.limit,
        throttle=args.throttle,
        progress=not args.no_progress,
        evaluate=args.evaluate,
        eval_dir=(Path(args.eval_dir) if args.eval_dir else out.with_name(f"{out.stem}_eval"))
        if args.evaluate and out
        else None,
        show=args.show,
        figure=Path(args.figure or default_figure_path(args.inputs[0])) if args.show else None,
        accept_above=args.accept_above,
        embeddings=check_embeddings(args, model),
    )


def check_args(args: argparse.Namespace) -> None:
    positive = {
        "--topk": args.topk,
        "--batch-size": args.batch_size,
        "--limit": args.limit,
        "--threads": args.threads,
        "--read-threads": args.read_threads,
        "--timeout": args.timeout,
        "--max-file-mb": args.max_file_mb,
        "--max-inflight-mb": args.max_inflight_mb,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be positive (got {value})")
    check_accept_above(args.accept_above)
    for flag, value in (("--workers", args.workers), ("--throttle", args.throttle)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be 0 or more (got {value})")
    if args.show and (len(args.inputs) != 1 or os.path.isdir(args.inputs[0])):
        raise UserError("--show takes exactly one image file or URL; for folders use --out preds.csv")
    if args.evaluate and (len(args.inputs) != 1 or is_url(args.inputs[0])):
        raise UserError("--evaluate takes exactly one labelled folder (class subfolders) as input")
    for flag, value, mode, on in (
        ("--eval-dir", args.eval_dir, "--evaluate", args.evaluate),
        ("--figure", args.figure, "--show", args.show),
    ):
        if value and not on:
            raise UserError(f"{flag} only applies with {mode}; add {mode} or drop {flag}")
    check_out(args.out, args.show)


def check_embeddings(args: argparse.Namespace, model: Path) -> Path | None:
    """--embeddings FILE.npy: a bundle's torch model (exported files output logits only), a whole run."""
    if not args.embeddings:
        return None
    path = Path(args.embeddings)
    problems = [
        (path.suffix != ".npy", f"--embeddings {path} must end in .npy"),
        (
            model_kind(model) != "torch",
            "--embeddings needs the bundle folder (runs/<name>/best): exported model files output logits only",
        ),
        (
            bool(args.resume or args.show),
            "--embeddings writes one file for a whole run; it does not go with --resume or --show",
        ),
        (path.is_dir(), f"--embeddings {path} is a folder; give a file name such as {path}/features.npy"),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)
    return path


def check_out(out: str | None, show: bool) -> None:
    if not out and not show:
        raise UserError("--out is required (e.g. --out predictions.csv)")
    if out and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out}/predictions.csv")
    if out and os.path.exists(out) and not os.path.isfile(out):  # --overwrite would unlink it
        raise UserError(
            f"--out {out} is not a regular file (a device, FIFO or socket); give a file name "
            "such as predictions.csv"
        )


def output_format(fmt: str | None, out: Path | None) -> str:
    if fmt:
        return fmt
    return "jsonl" if out and out.suffix.lower() in (".jsonl", ".ndjson") else "csv"


def default_figure_path(source: str) -> Path:
    name = urllib.parse.urlparse(source).path if is_url(source) else source
    stem = Path(os.path.basename(name.rstrip("/")) or "image").stem or "image"
    return Path(f"{stem}_topk.png")
