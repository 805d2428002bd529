"""`imgclf-export BUNDLE` (or `python -m export.main`): bundle → model.onnx (+ fp16/int8 variants, TensorRT
engine), each kept only if it gives PyTorch's answers on real images.

The flags are parsed and checked by export/cli.py (no torch); export/run.py does the work.
"""

from __future__ import annotations

import sys

from core.errors import cli_entry
from core.interrupt import command, started
from export.cli import parse


@command  # Ctrl-C at any moment, importing torch included: one line, exit 130
@cli_entry
def main(argv: list[str] | None = None) -> int:
    job = parse(argv)
    from export.run import run  # torch and onnx take seconds to import: only once the flags are good

    started()  # from here a Ctrl-C removes the work folder on its way out (export/run.py)
    return run(job)


if __name__ == "__main__":
    sys.exit(main())
