"""Every split is checked for decodable images before any training: a valid/ or test/ of unreadable files
must fail in seconds, not after the first epoch (or after the whole run)."""

from __future__ import annotations

from pathlib import Path

from core.errors import UserError
from core.images import BadImage, decode_image

SAMPLE = 16  # spread over the split; a split where none of these decode is refused


def spread(n: int, k: int = SAMPLE) -> list[int]:
    """Up to `k` indices spread evenly over range(n), first and last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def check_split_decodes(split: str, folder: Path, paths: list[str]) -> None:
    """One line, exit 2, when none of a spread sample of the split's images can be decoded."""
    picked = [paths[i] for i in spread(len(paths))]
    reasons = []
    for path in picked:
        try:
            decode_image(path)
            return
        except BadImage as exc:
            reasons.append(str(exc))
        except OSError as exc:
            reasons.append(f"{path}: {exc.strerror or exc}")
    raise UserError(
        f"none of {len(picked)} images sampled from the {split} split ({folder}) could be decoded "
        f"(e.g. {reasons[0][:200]}); replace or remove the unreadable files in {folder}"
    )
