"""Fine-tune an image classifier: `imgclf-train --config configs/X.yaml [key=value ...]`.

Under Accelerate: `accelerate launch --quiet -m train.main ...` or, from the checkout,
`accelerate launch --quiet train/main.py ...`. `python -m core.config` prints every config key.
"""

from __future__ import annotations

import os

from core.errors import EXIT_USER_ERROR, UserError, cli_entry
from core.interrupt import command, started
from train.cli import parse_job


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


@command  # Ctrl-C at any moment, importing torch included: one line, exit 130
@cli_entry
def main(argv: list[str] | None = None) -> int:
    job = parse_job(argv)
    from train.run import train  # heavy imports (torch, accelerate) only after the config is known good

    started()  # from here a Ctrl-C unwinds (a training loop's stops at the next step and saves last/)
    try:
        return train(job).exit_code
    except UserError:
        if _is_main_rank():
            raise
        raise SystemExit(EXIT_USER_ERROR) from None  # every rank fails alike; one line from rank 0 is enough


if __name__ == "__main__":
    raise SystemExit(main())
