"""Turn a predictions file into folders: accepted rows into DIR/<class>/, the rest into a review queue.

imgclf-sort predictions.csv --to sorted/ [--mode link|copy|symlink|move] [--dry-run] [--undo]

DIR/<class>/ holds accepted rows, DIR/_review/<predicted class>/ rows below the model's threshold (with
DIR/_review/review.csv, least confident first, so a person starts with the hardest), DIR/_errors/ rows that
could not be classified. Nothing is overwritten, a second run adds nothing twice, and `--undo` reverses
what was placed (moves go back). Once reviewed, DIR's class folders are training input (`imgclf-split`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError, cli_entry
from core.fsio import write_text_atomic
from core.images import SORT_QUEUES
from core.interrupt import command, started
from core.lock import OutputLock
from serve.pathnames import escape_path
from serve.row_paths import BadRecord, meta_path, read_record, recorded_base, resolve_row
from serve.sort_files import MANIFEST, MODES, Manifest, Placement, free_name, intent_fields, place, undo_one

REVIEW, ERRORS = SORT_QUEUES
REVIEW_CSV = "review.csv"
GUARDED = ("=", "+", "-", "@", "\t", "\r")  # a leading ' keeps these cells from running as formulas


@dataclass(frozen=True)
class SortJob:
    predictions: Path
    to: Path
    mode: str = "link"
    root: str | None = None
    dry_run: bool = False
    undo: bool = False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="imgclf-sort",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("predictions", help="a predictions .csv or .jsonl written by imgclf-serve")
    ap.add_argument("--to", required=True, metavar="DIR", help="folder to sort into (made if missing)")
    ap.add_argument(
        "--mode",
        choices=MODES,
        default="link",
        help="hard link (no extra space, same file system), copy, symlink, or move the originals",
    )
    ap.add_argument(
        "--root", help="folder the row paths are relative to (default: read from the file's .meta.json)"
    )
    ap.add_argument("--dry-run", action="store_true", help="print what would be placed; write nothing")
    ap.add_argument("--undo", action="store_true", help="reverse earlier sorts into DIR (moves go back)")
    return ap


# ─── reading predictions ──────────────────────────────────────────────────────────────────────


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            if path.suffix == ".jsonl":
                rows = [json.loads(line) for line in fh if line.strip()]
            else:
                rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise UserError(f"{path} is not a predictions file imgclf-serve wrote ({exc})") from None
    if rows and not {"path", "status", "label"} <= set(rows[0]):
        raise UserError(f"{path} has no path/status/label columns; give a file written by imgclf-serve")
    return rows


def unguard(cell: str) -> str:
    """A label cell as the CSV guards it (`'=x`) back to the class name (`=x`)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in GUARDED else cell


def is_accepted(row: dict) -> bool:
    """`accepted` true/false; a file from before calibration has no such column: every ok row counts."""
    value = row.get("accepted", True)
    return value is True or str(value).strip().lower() in ("true", "1")


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def folder_name(label: str, n: int) -> str:
    if label in ("", ".", "..") or "/" in label or "\0" in label or label in (REVIEW, ERRORS):
        raise UserError(
            f"row {n}: label {label[:100]!r} cannot be a folder name; is this a serve predictions file?"
        )
    return label


# ─── where the rows' files are ────────────────────────────────────────────────────────────────


def path_base(predictions: Path, root: str | None) -> tuple[str | None, list[Path]]:
    """The folder relative row paths start from (serve.row_paths), and the classified inputs (DIR must
    lie outside them)."""
    if root:
        return str(Path(root).resolve()), [Path(root).resolve()]
    meta = meta_path(predictions)
    recorded = read_record(meta)
    try:
        if recorded is None and meta.exists():
            raise BadRecord("not a JSON object")
        base, inputs = recorded_base(recorded or {})
    except BadRecord as exc:
        raise UserError(
            f"{meta} is damaged ({exc}), so the rows' files cannot be found; restore it, or give "
            "--root FOLDER (the folder the rows' paths are relative to)"
        ) from None
    return base, [Path(p) for p in inputs]


def source_of(cell: str, base: str | None, n: int) -> str:
    source = resolve_row(cell, base)
    if source is None:
        raise UserError(
            f"row {n}: {cell[:100]!r} is relative and the predictions file has no .meta.json saying to what; "
            "give --root FOLDER (the folder you classified)"
        )
    return source


def check_outside(dest: Path, inputs: list[Path]) -> None:
    real = Path(os.path.realpath(dest))
    for folder in inputs:
        inside = Path(os.path.realpath(folder))
        if real == inside or inside in real.parents:
            raise UserError(
                f"--to {dest} lies inside the classified input {folder}; sort into a folder outside it "
                "(a later serve of that input would classify the sorted copies again)"
            )


# ─── the plan ─────────────────────────────────────────────────────────────────────────────────


def plan(rows: list[dict], base: str | None) -> list[Placement]:
    out = []
    for n, row in enumerate(rows, 2):  # line 1 is the header
        src = source_of(str(row["path"]), base, n)
        name = os.path.basename(src)
        if row.get("status") != "ok":
            out.append(Placement(src, os.path.join(ERRORS, name), "error", error=str(row.get("error", ""))))
            continue
        label = folder_name(unguard(str(row["label"])), n)
        fields = dict(label=label, prob=_number(row.get("prob")), margin=_number(row.get("margin")))
        fields.update(entropy=_number(row.get("entropy")), row_path=str(row["path"]))
        if is_accepted(row):
            out.append(Placement(src, os.path.join(label, name), "class", **fields))
        else:
            out.append(Placement(src, os.path.join(REVIEW, label, name), "review", **fields))
    return out


def write_review(root: Path, manifest: Manifest) -> int:
    """DIR/_review/review.csv from every review placement that stands, least confident first."""
    recs = [r for r in manifest.live() if r["kind"] == "review"]
    if not recs:
        (root / REVIEW / REVIEW_CSV).unlink(missing_ok=True)
        return 0
    recs.sort(key=lambda r: (r["prob"] if r["prob"] is not None else -1.0, r["margin"] or 0.0))
    lines = [["file", "predicted", "prob", "margin", "entropy", "source"]]
    lines += [
        [escape_path(r["dest"]), r["label"], r["prob"], r["margin"], r["entropy"], r["row_path"]]
        for r in recs
    ]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["" if v is None else v for v in ln] for ln in lines])
    write_text_atomic(root / REVIEW / REVIEW_CSV, buf.getvalue())
    return len(recs)


# ─── the command ──────────────────────────────────────────────────────────────────────────────


def parse_job(argv: list[str] | None) -> SortJob:
    a = build_parser().parse_args(argv)
    if a.undo and a.dry_run:
        raise UserError("--undo and --dry-run do not combine; run --undo alone")
    return SortJob(Path(a.predictions), Path(a.to), a.mode, a.root, a.dry_run, a.undo)


def sort(job: SortJob) -> int:
    root = job.to
    base, inputs = path_base(job.predictions, job.root)
    check_outside(root, inputs)
    if job.undo:
        return undo(root)
    placements = plan(read_rows(job.predictions), base)
    if job.dry_run:
        return dry_run(root, placements)
    root.mkdir(parents=True, exist_ok=True)
    with OutputLock(root / ".imgclf-sort", "sort", "choose another --to"):
        return execute(root, placements, job.mode)


def execute(root: Path, placements: list[Placement], mode: str) -> int:
    manifest, taken = Manifest(root), set()
    done, skipped, missing = Counter(), 0, 0
    for p in placements:
        if manifest.placed(p.src):
            skipped += 1
            continue
        if not os.path.lexists(p.src):
            missing += 1
            continue
        dest = free_name(root, p.dest, taken)
        manifest.write("intent", **intent_fields(p, dest, mode))
        place(p.src, root / dest, mode)
        manifest.write("done", src=p.src)
        done[p.kind] += 1
    review = write_review(root, manifest)
    print(
        f"sorted into {root}: {done['class']} accepted into class folders, {done['review']} to {REVIEW}/ "
        f"({review} in {REVIEW}/{REVIEW_CSV}), {done['error']} to {ERRORS}/; {skipped} already sorted"
    )
    if missing:
        print(f"warning: {missing} files named in the predictions no longer exist; left out", file=sys.stderr)
    return 0


def dry_run(root: Path, placements: list[Placement]) -> int:
    manifest = Manifest(root) if root.is_dir() else None
    new = [p for p in placements if not (manifest and manifest.placed(p.src))]
    kinds = Counter(p.kind for p in new)
    for p in new[:20]:
        print(f"  {p.src} -> {root / p.dest}")
    print(
        f"dry run: would place {len(new)} files ({kinds['class']} accepted, {kinds['review']} to review, "
        f"{kinds['error']} errors); {len(placements) - len(new)} already sorted; nothing written"
    )
    return 0


def undo(root: Path) -> int:
    if not (root / MANIFEST).is_file():
        raise UserError(f"{root} holds no sort manifest (.imgclf-sort.jsonl); nothing to undo")
    with OutputLock(root / ".imgclf-sort", "sort", "choose another --to"):
        manifest = Manifest(root)
        reversed_, kept = 0, 0
        for rec in reversed(manifest.live()):
            if undo_one(root, rec):
                manifest.write("undone", src=rec["src"])
                reversed_ += 1
            else:
                kept += 1
        write_review(root, manifest)
        _remove_empty_folders(root)
    print(f"undone {reversed_} placements in {root}; {kept} left alone (changed or moved since)")
    return 0


def _remove_empty_folders(root: Path) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):  # deepest first
        if Path(folder) != root and not os.listdir(folder):
            os.rmdir(folder)


@command  # Ctrl-C: one line, exit 130 (what was placed is in the manifest; a rerun adds the rest)
@cli_entry
def main(argv: list[str] | None = None) -> int:
    started()
    return sort(parse_job(argv))


if __name__ == "__main__":
    raise SystemExit(main())
