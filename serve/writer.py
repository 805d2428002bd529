"""The predictions file: CSV (or JSONL) rows written whole and flushed every batch; resume and part merging.

A kill loses at most the batch in flight: every batch is one write of complete lines, and a torn
last line (a kill inside that write) is cut off when the file is resumed.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import margin_entropy
from core.errors import UserError
from core.fsio import atomic_path, shown_as
from core.record_checks import TOPK_SEPARATOR  # training refuses class names holding it
from serve.accept import is_accepted

FORMATS = ("csv", "jsonl")
SEQ = "seq"  # extra first column of per-process part files: the stream position, for the merge
PROB_DECIMALS = 6
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection: a class folder
# named `=HYPERLINK(...)`); the CSV's name cells get a leading ' (shown as text, the usual guard).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Layout:
    """What the rows hold. Column names follow the k actually used: min(--topk, classes), so a 4-class
    model's columns are top4_* (never a top5_* or top100_* holding 4 values), also when resuming."""

    classes: tuple[str, ...]
    display_names: tuple[str, ...]
    topk: int = 5
    probs: bool = False
    fmt: str = "csv"
    threshold: float | None = None  # `accepted` = top-1 probability >= threshold; None accepts every ok row

    def __post_init__(self) -> None:
        object.__setattr__(self, "topk", max(1, min(self.topk, len(self.classes))))  # frozen: set once here

    @property
    def columns(self) -> list[str]:
        k = f"top{self.topk}"
        per_class = [f"prob_{c}" for c in self.classes] if self.probs else []
        return [
            "path",
            "status",
            "label",
            "display_name",
            "prob",
            "accepted",
            "margin",
            "entropy",
            f"{k}_labels",
            f"{k}_probs",
            "error",
            *per_class,
        ]

    @property
    def topk_columns(self) -> tuple[str, str]:
        return f"top{self.topk}_labels", f"top{self.topk}_probs"


# ─── rows ─────────────────────────────────────────────────────────────────────────────────────


NOT_FINITE = "model produced NaN/Inf for this image; check the model (its weights or export)"


def ok_row(layout: Layout, path: str, probs: np.ndarray) -> dict[str, Any]:
    """The row for one image's probabilities; an error row when any is NaN/Inf (never an `ok` row whose
    numbers cannot be trusted)."""
    return ok_rows(layout, [path], np.asarray(probs)[None])[0]


def ok_rows(layout: Layout, paths: list[str], probs: np.ndarray) -> list[dict[str, Any]]:
    """`ok_row` for a batch [n, classes]: margin and entropy in one call for the batch, not one per image
    (the same numbers: each row is reduced on its own)."""
    with np.errstate(all="ignore"):  # a NaN/Inf row becomes an error row below; its numbers are unused
        margins, entropies = margin_entropy(probs)
    return [_ok_row(layout, *args) for args in zip(paths, probs, margins, entropies)]


def _ok_row(layout: Layout, path: str, probs: np.ndarray, margin: float, entropy: float) -> dict[str, Any]:
    if not np.isfinite(probs).all():
        return error_row(layout, path, NOT_FINITE)
    order = np.argsort(-probs, kind="stable")[: layout.topk]
    best = int(order[0])
    labels_col, probs_col = layout.topk_columns
    row = {
        "path": path,
        "status": "ok",
        "label": layout.classes[best],
        "display_name": layout.display_names[best],
        "prob": float(probs[best]),
        "accepted": is_accepted(float(probs[best]), layout.threshold),
        "margin": float(margin),
        "entropy": float(entropy),
        labels_col: [layout.classes[i] for i in order],
        probs_col: [float(probs[i]) for i in order],
        "error": "",
    }
    if layout.probs:
        row.update({f"prob_{c}": float(p) for c, p in zip(layout.classes, probs)})
    return row


def error_row(layout: Layout, path: str, reason: str) -> dict[str, Any]:
    labels_col, probs_col = layout.topk_columns
    row = {
        "path": path,
        "status": "error",
        "label": None,
        "display_name": None,
        "prob": None,
        "accepted": None,
        "margin": None,
        "entropy": None,
        labels_col: [],
        probs_col: [],
        "error": reason,
    }
    if layout.probs:
        row.update({f"prob_{c}": None for c in layout.classes})
    return row


def _cell(value: Any) -> str:
    """CSV text for a value; already-formatted strings (rows read back for a merge) pass unchanged."""
    if value is None:
        return ""
    if isinstance(value, bool):  # before int/float checks: bool is an int
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.{PROB_DECIMALS}f}"
    if isinstance(value, list):
        return TOPK_SEPARATOR.join(_cell(v) for v in value)
    return str(value)


def spreadsheet_safe(text: str) -> str:
    """`'` + text when a spreadsheet would take `text` for a formula; idempotent (' starts no formula)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _name_cell(value: Any) -> str:
    """A label, display name or top-k labels cell: each name guarded by spreadsheet_safe."""
    if isinstance(value, list):
        return TOPK_SEPARATOR.join(spreadsheet_safe(_cell(v)) for v in value)
    return spreadsheet_safe(_cell(value))


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, PROB_DECIMALS)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def encode(layout: Layout, rows: Iterable[dict[str, Any]], seq: bool = False) -> str:
    """Complete lines for `rows` in the layout's column order (a part file's lines start with seq)."""
    columns = ([SEQ] if seq else []) + layout.columns
    if layout.fmt == "jsonl":
        return "".join(
            json.dumps({c: _json_value(r.get(c)) for c in columns}, ensure_ascii=False) + "\n" for r in rows
        )
    names = {"label", "display_name", layout.topk_columns[0]}  # .jsonl keeps them verbatim
    buf = io.StringIO()
    plain, quote_all = (
        csv.writer(buf, lineterminator="\n"),
        csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL),
    )
    for r in rows:
        cells = [(_name_cell if c in names else _cell)(r.get(c)) for c in columns]
        # csv quotes a field holding "\n" but not one holding a bare "\r", which readers take as a line end
        (quote_all if any("\r" in c for c in cells) else plain).writerow(cells)
    return buf.getvalue()


def header(layout: Layout, seq: bool = False) -> str:
    if layout.fmt == "jsonl":
        return ""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(([SEQ] if seq else []) + layout.columns)
    return buf.getvalue()


# ─── writing ──────────────────────────────────────────────────────────────────────────────────


class RowWriter:
    """Appends batches of rows to one file; each batch is one write of whole lines, then flushed."""

    def __init__(self, path: str | Path, layout: Layout, append: bool = False, seq: bool = False):
        self.layout, self.seq = layout, seq
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not append or not path.exists() or path.stat().st_size == 0
            self.fh = open(  # noqa: SIM115 (held for the writer's life, closed in close())
                path, "a" if append else "w", encoding="utf-8", newline="", errors="backslashreplace"
            )
        except OSError as exc:
            raise UserError(f"cannot write {path} ({exc.strerror or exc}); choose another --out") from None
        self.path, self.failed = path, False
        self.shown = out_of_part(path) if seq else path  # a full disk names the --out the user asked for
        if fresh:
            self._put(header(layout, seq))

    def _put(self, text: str) -> None:
        """Whole lines or nothing: a failed write (disk full) is cut back to the last whole batch, so the
        file stays a valid resume point, and the error names the file."""
        good = self.fh.tell()
        try:
            self.fh.write(text)
            self.fh.flush()
        except OSError as exc:
            self.failed = True
            with contextlib.suppress(OSError, ValueError):  # drop what is still buffered: close() must not
                self.fh.buffer.raw.close()  # write it; the raw file, so no fd of another thread's is closed
            with contextlib.suppress(OSError):
                os.truncate(self.path, good)
            raise OSError(exc.errno, exc.strerror, str(self.shown)) from exc

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._put(encode(self.layout, rows, self.seq))

    def close(self) -> None:
        if self.failed:
            with contextlib.suppress(OSError, ValueError):
                self.fh.close()
            return
        self.fh.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ─── reading back: resume, merge, evaluation ──────────────────────────────────────────────────


def repair_tail(path: str | Path, fmt: str = "csv") -> int:
    """Cut a torn tail (a kill inside a write) after the last complete record. Returns the bytes removed.

    CSV records can span lines (a file name holding a newline is quoted), so the CSV is parsed: a record
    is complete when it ends with a newline, outside quotes, and has as many fields as the header.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 0
    keep = _last_csv_record_end(path) if fmt == "csv" else _last_line_end(path, size)
    if keep < size:
        with open(path, "rb+") as fh:
            fh.truncate(keep)
    return size - keep


def _last_line_end(path: Path, size: int) -> int:
    """JSONL: newlines inside values are escaped, so the last newline ends the last whole record."""
    with open(path, "rb") as fh:
        pos = size
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            nl = fh.read(step).rfind(b"\n")
            if nl >= 0:
                return pos - step + nl + 1
            pos -= step
    return 0


def _last_csv_record_end(path: Path) -> int:
    """Byte offset just after the last complete CSV record; damage before a later good record is refused."""
    consumed, last_line_whole = 0, True

    def lines(fh):  # feeds csv raw lines while counting their bytes; a record ends where its last line does
        nonlocal consumed, last_line_whole
        for raw in fh:
            consumed += len(raw)
            last_line_whole = raw.endswith(b"\n")
            yield raw.decode("utf-8", "surrogateescape")

    good, width, bad_at = 0, None, None
    with open(path, "rb") as fh:
        reader = csv.reader(lines(fh), strict=True)  # strict: end of data inside quotes is an error
        try:
            for record in reader:
                width = len(record) if width is None else width
                if last_line_whole and len(record) == width:
                    if bad_at is not None:
                        raise UserError(
                            f"{path} is damaged at line {bad_at} (not only at its end); "
                            "pass --overwrite to start it again, or use another --out"
                        )
                    good = consumed
                elif bad_at is None:
                    bad_at = reader.line_num
        except csv.Error:  # an unterminated quote: a torn tail if nothing follows it
            if fh.read(1):
                raise UserError(
                    f"{path} is damaged at line {reader.line_num} (not a CSV record); pass "
                    "--overwrite to start it again, or use another --out"
                ) from None
    return good


def check_layout(path: str | Path, layout: Layout, seq: bool = False) -> None:
    """Refuse to append to a file whose columns differ (another model, --topk or --probs)."""
    expected = ([SEQ] if seq else []) + layout.columns
    first = _first_line(Path(path))
    if first is None:
        return
    found = _columns_of(first, layout.fmt)
    if found != expected:
        raise UserError(
            f"{path} has different columns than this run would write ({_diff(found, expected)}); "
            "use the same model, --topk, --probs and --format, or pass --overwrite"
        )


def _first_line(path: Path) -> str | None:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        line = fh.readline()
    return line if line.endswith("\n") else None


def _columns_of(line: str, fmt: str) -> list[str] | None:
    if fmt == "jsonl":
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            return None
        return list(obj) if isinstance(obj, dict) else None
    return next(csv.reader([line]))


def _diff(found: list[str] | None, expected: list[str]) -> str:
    if found is None:
        return "it is not a predictions file in this format"
    extra, missing = [c for c in found if c not in expected], [c for c in expected if c not in found]
    parts = ([f"unexpected {', '.join(extra[:4])}"] if extra else []) + (
        [f"missing {', '.join(missing[:4])}"] if missing else []
    )
    return "; ".join(parts) or "column order differs"


def iter_rows(path: str | Path, layout: Layout) -> Iterator[dict[str, Any]]:
    """Rows of a predictions (or part) file as dicts; CSV values stay text."""
    with open(path, encoding="utf-8", newline="") as fh:
        if layout.fmt == "jsonl":
            for line in fh:
                if line.strip():
                    yield json.loads(line)
        else:
            yield from csv.DictReader(fh)


def done_paths(path: str | Path, layout: Layout) -> set[str]:
    path = Path(path)
    return {r["path"] for r in iter_rows(path, layout)} if path.exists() else set()


def part_path(out: str | Path, rank: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.part{rank}")


def out_of_part(path: str | Path) -> Path:
    """The --out file a part file (part_path) belongs to; any other path as it is."""
    path = Path(path)
    found = re.fullmatch(r"(.+)\.part\d+", path.name)
    return path.with_name(found.group(1)) if found else path


def existing_parts(out: str | Path) -> list[Path]:
    out = Path(out)
    pattern = re.compile(re.escape(out.name) + r"\.part\d+$")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))


def merge_parts(
    out: str | Path, layout: Layout, parts: list[Path], append: bool, skip: set[str] | None = None
) -> int:
    """Merge per-process part files (each in stream order) into `out` in stream order, streaming.

    Appends after a resumed file's rows, or writes a new file atomically; then removes the parts.
    Returns the number of rows merged.
    """
    skip = skip or set()
    for p in parts:
        repair_tail(p, layout.fmt)
    streams = [iter_rows(p, layout) for p in parts]
    merged = (r for r in heapq.merge(*streams, key=lambda r: int(r[SEQ])) if r["path"] not in skip)
    with shown_as(out, out):  # a full disk names --out: a failed buffered write names no file
        if append and Path(out).exists():
            count = _append_rows(out, layout, merged)
        else:
            with atomic_path(out) as tmp:
                count = _append_rows(tmp, layout, merged, fresh=True)
    for p in parts:
        p.unlink(missing_ok=True)
    return count


def _append_rows(
    path: str | Path, layout: Layout, rows: Iterator[dict[str, Any]], fresh: bool = False
) -> int:
    count, block = 0, []
    with open(path, "w" if fresh else "a", encoding="utf-8", newline="") as fh:
        fh.write(header(layout) if fresh else "")
        for row in rows:
            block.append(row)
            if len(block) == 1024:
                fh.write(encode(layout, block))
                count, block = count + len(block), []
        fh.write(encode(layout, block))
        fh.flush()
        os.fsync(fh.fileno())
    return count + len(block)
