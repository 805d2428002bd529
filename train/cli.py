"""The torch-free way into training: parse the command line, load and check the config, return a TrainJob.

Nothing here imports torch or accelerate, so `--help` and every config mistake answer in a fraction of
a second; train/run.py takes the job and does the heavy work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from core.config import Config, load_config

USAGE_EXAMPLE = (
    "examples:\n"
    "  imgclf-train --config configs/demo.yaml train.epochs=3 data.root=data/demo\n"
    "  accelerate launch --quiet -m train.main --config configs/demo.yaml\n"
    "  accelerate launch --quiet train/main.py --config configs/demo.yaml   (from the checkout)\n"
    "every config key and its default: python -m core.config"
)


@dataclass(frozen=True)
class TrainJob:
    """One training run as asked for: the checked config and the stem new run folders are named after."""

    config: Config
    stem: str  # `demo` for configs/demo.yaml: runs/demo-YYYYmmdd-HHMMSS
    args: tuple[str, ...] = ()  # the command-line arguments as given: a stopped run prints them to resume


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="imgclf-train",
        description="Fine-tune an image classifier on image folders (one process, or many under accelerate launch).",
        epilog=USAGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--config",
        "-c",
        default=None,
        help="YAML recipe (configs/*.yaml) (default: none, the built-in defaults apply)",
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides applied after the recipe, e.g. train.epochs=3 (default: none)",
    )
    return ap


def parse_job(argv: list[str] | None = None) -> TrainJob:
    """The job for `argv`; a config mistake raises UserError (one line, exit 2) before any heavy import."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    return TrainJob(config=config, stem=Path(args.config).stem if args.config else "run", args=tuple(argv))
