"""The sort command's file work: place one file without ever overwriting, and the manifest that makes a
second run add nothing twice and lets `--undo` reverse what was placed.

The manifest (`DIR/.imgclf-sort.jsonl`, hidden so training and the splitter never see it) gets an intent
line before each placement and a done line after it, so a kill between the two is finished on the next run
(the destination exists) or redone (it does not). Sources are keyed by their absolute path as text.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import UserError
from core.fsio import shown_as

MANIFEST = ".imgclf-sort.jsonl"
MODES = ("link", "copy", "symlink", "move")


@dataclass(frozen=True)
class Placement:
    """One file to place: `dest` is relative to DIR and is the wanted name (a free one is chosen)."""

    src: str
    dest: str
    kind: str  # class | review | error
    label: str = ""
    prob: float | None = None
    margin: float | None = None
    entropy: float | None = None
    error: str = ""
    row_path: str = ""


class Manifest:
    """Every placement ever made into DIR, in order; state per source: intent, done or undone."""

    def __init__(self, root: Path):
        self.path = root / MANIFEST
        self.entries: dict[str, dict] = {}  # src → the latest record (with its final dest and mode)
        self.state: dict[str, str] = {}
        self.whole: int | None = None  # where a torn last line starts: cut before the next line is added
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(iter(fh.readline, ""), 1):
                if not line.endswith("\n"):  # torn last line from a kill or a full disk: never acted on
                    self.whole = os.path.getsize(self.path) - len(line.encode("utf-8", "surrogateescape"))
                    break
                try:
                    rec = json.loads(line)
                    src, op = rec["src"], rec["op"]
                except (ValueError, KeyError, TypeError):
                    raise UserError(
                        f"{self.path} line {n} is damaged; restore it or sort into a new folder"
                    ) from None
                if op == "intent":
                    self.entries[src] = rec
                self.state[src] = op

    def placed(self, src: str) -> bool:
        """True once a source has been handed to DIR (also when a person has since moved it on)."""
        if self.state.get(src) == "done":
            return True
        return self.state.get(src) == "intent" and os.path.lexists(
            self.path.parent / self.entries[src]["dest"]
        )

    def pending(self, src: str) -> bool:
        return self.state.get(src) == "intent" and not self.placed(src)

    def write(self, op: str, **fields) -> None:
        """One whole line or none: a failed append (disk full) is cut back, and a torn line left by a kill
        is cut before this one, so no line is ever written after a torn one (which would read as damage)."""
        data = memoryview((json.dumps({"op": op, **fields}) + "\n").encode("utf-8"))
        with shown_as(self.path, self.path), open(self.path, "ab", buffering=0) as fh:  # disk full: named
            good = fh.seek(0, os.SEEK_END) if self.whole is None else self.whole
            try:
                fh.truncate(good)
                while data:
                    data = data[fh.write(data) :]
                os.fsync(fh.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    fh.truncate(good)
                raise
            self.whole = None
        if op == "intent":
            self.entries[fields["src"]] = {"op": op, **fields}
        self.state[fields["src"]] = op

    def live(self) -> list[dict]:
        """Records of placements that stand (done, or an intent whose destination exists), in order."""
        return [rec for src, rec in self.entries.items() if self.placed(src)]


def free_name(root: Path, rel: str, taken: set[str]) -> str:
    """`rel` when neither on disk nor planned, else `stem_1.ext`, `stem_2.ext`, ...: never overwrite."""
    folder, name = os.path.split(rel)
    stem, ext = os.path.splitext(name)
    candidate, n = rel, 0
    while candidate in taken or os.path.lexists(root / candidate):
        n += 1
        candidate = os.path.join(folder, f"{stem}_{n}{ext}")
    taken.add(candidate)
    return candidate


def place(src: str, dest: Path, mode: str) -> None:
    """Put `src` at `dest` by `mode`. Every way in fails rather than replace an existing `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if mode == "symlink":
            os.symlink(os.path.abspath(src), dest)
        elif mode == "link":
            os.link(src, dest)
        elif mode == "copy":
            _copy_new(src, dest)
        else:
            _move(src, dest)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise UserError(
                f"cannot hard-link {src} into {dest.parent}: another file system; use --mode copy or symlink"
            ) from None
        raise UserError(f"cannot place {src} at {dest} ({exc.strerror or exc})") from None


def _copy_new(src: str, dest: Path) -> None:
    """Copy to a hidden temp name, then link it into place: a kill never leaves a half-copied image."""
    tmp = dest.with_name(f".{dest.name}.sort-tmp")
    try:
        shutil.copy2(src, tmp)
        os.link(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _move(src: str, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM):
            raise
        _copy_new(src, dest)
    os.unlink(src)


def undo_one(root: Path, rec: dict) -> bool:
    """Reverse one placement if what is there is still ours; False when left alone (changed or gone)."""
    dest, src, mode = root / rec["dest"], rec["src"], rec["mode"]
    if not os.path.lexists(dest):
        return False
    if mode == "move":
        if os.path.lexists(src):
            return False  # something new took the old name: never overwrite it
        os.makedirs(os.path.dirname(src) or ".", exist_ok=True)
        _move(str(dest), Path(src))
        return True
    if mode == "symlink":
        ours = os.path.islink(dest) and os.readlink(dest) == os.path.abspath(src)
    elif mode == "link":
        ours = os.path.exists(src) and os.path.samefile(src, dest)
    else:
        ours = not os.path.islink(dest) and os.path.getsize(dest) == rec.get("size")
    if ours:
        os.unlink(dest)
    return ours


def intent_fields(p: Placement, dest: str, mode: str) -> dict:
    fields = {**asdict(p), "dest": dest, "mode": mode}
    if mode == "copy":
        fields["size"] = os.path.getsize(p.src)
    return fields
