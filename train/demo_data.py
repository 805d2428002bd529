"""Write the built-in demo image folder: `python -m train.demo_data data/demo` (see core.demo_data)."""

from __future__ import annotations

from core import demo_data
from core.errors import UserError, cli_entry, disk_full
from core.interrupt import command, started


@command  # Ctrl-C at any moment: one line, exit 130 (the folder is built aside and renamed into place)
@cli_entry
def main(argv: list[str] | None = None) -> int:
    started()
    try:
        return demo_data.main(argv)
    except OSError as exc:  # DST under a file, read-only, disk full: the user's to fix, so one line
        if disk_full(exc) is not None:
            raise  # cli_entry's disk-full line: it names DST and says to free space
        raise UserError(f"cannot write the demo data set ({exc}); pass a writable folder") from None


if __name__ == "__main__":
    raise SystemExit(main())
