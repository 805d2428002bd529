"""Write the built-in demo image folder: `python -m train.demo_data data/demo` (see core.demo_data)."""

from __future__ import annotations

from core import demo_data
from core.errors import UserError, cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> int:
    try:
        return demo_data.main(argv)
    except OSError as exc:  # DST under a file, read-only, disk full: the user's to fix, so one line
        raise UserError(f"cannot write the demo data set ({exc}); pass a writable folder") from None


if __name__ == "__main__":
    raise SystemExit(main())
