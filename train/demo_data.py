"""Write the built-in demo image folder: `python -m train.demo_data data/demo` (see core.demo_data)."""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python train/demo_data.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.demo_data import main

if __name__ == "__main__":
    raise SystemExit(main())
