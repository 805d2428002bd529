"""imgclf-serve: classify folders, files and URLs into a streaming, resumable CSV.

imgclf-serve runs/flowers/best data/incoming --out predictions.csv
accelerate launch --num_processes 8 -m serve.main model.onnx /data/millions --out preds.csv

The flags are read and checked by serve/cli.py (torch-free, so --help and mistakes answer at once);
serve/run.py, which imports torch, runs the checked job.
"""

from __future__ import annotations

import sys

from core.dist import ends_process_group
from core.errors import cli_entry
from core.interrupt import command, started
from serve.cli import parse


@command  # Ctrl-C at any moment, importing torch included: one line, exit 130
@cli_entry
@ends_process_group
def main(argv: list[str] | None = None) -> int:
    job = parse(argv)
    from serve.run import run_job  # torch loads only for a checked job

    started()  # from here a Ctrl-C stops the run cleanly (serve/run.py): rows kept, --resume named
    return run_job(job)


if __name__ == "__main__":
    sys.exit(main())
