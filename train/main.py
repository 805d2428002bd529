"""Fine-tune an image classifier: `accelerate launch train/main.py --config configs/X.yaml [key=value ...]`.

Also runs as `python train/main.py ...` (one process) and `python -m train.main ...`. Every config
key can be overridden on the command line; `python -m core.config` prints them all.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python train/main.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import load_config
from core.errors import EXIT_USER_ERROR, UserError, cli_entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="train/main.py",
        description=__doc__.splitlines()[0],
        epilog="example: accelerate launch train/main.py --config configs/demo.yaml train.epochs=3 data.root=data/demo",
    )
    ap.add_argument("--config", "-c", help="YAML recipe (configs/*.yaml); without it the defaults apply")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    return ap.parse_args(argv)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    stem = Path(args.config).stem if args.config else "run"
    from train.run import train  # heavy imports (torch, accelerate) only after the config is known good

    try:
        return train(cfg, stem).exit_code
    except UserError:
        if _is_main_rank():
            raise
        raise SystemExit(EXIT_USER_ERROR) from None  # every rank fails alike; one line from rank 0 is enough


if __name__ == "__main__":
    raise SystemExit(main())
