"""Split SRC/<class>/* image folders into DST/{train,valid,test}/<class>/*: per class, seeded, exact counts.

    python train/split.py SRC DST --ratios 0.75 0.125 0.125 --seed 0 [--copy|--link|--move]

The Caltech tutorial's splitter done right. Per class the sorted file list is shuffled by an RNG
seeded with (seed, class name), so a class's split depends on nothing but its own files; counts come
from largest remainders, so they sum exactly to the class size and train always gets at least one.
DST is built in a hidden staging folder beside it and renamed into place at the end, so it is
either absent or complete. --move plans everything first, writes the plan, then moves, and moves
files back if anything fails. Copies of one image (same bytes, or a dHash within a few bits: resized,
re-encoded) form a group that goes to one split, so no copy leaks from train into valid/test
(--no-dedup: plain per-file split). Only image files (core.images.is_image_file) are split; the rest
stay where they are and are listed, except SRC/cat_to_name.json, which is copied to DST.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError, cli_entry
from core.images import is_class_folder, is_image_file
from core.interrupt import EXIT_INTERRUPTED, command, started
from train.image_hash import exact_pairs, fingerprints, groups, near_pairs

SPLITS = ("train", "valid", "test")
MANIFEST = "split_manifest.json"
PLAN = "split_plan.json"  # written into the staging folder before --move touches a file
LABEL_MAP = "cat_to_name.json"  # display names travel along (copied, whatever the mode)
RATIO_TOLERANCE = 1e-6
SHOW_SKIPPED = 5


@dataclass
class Source:
    """What SRC holds: image paths per class (relative to the class folder, sorted) and everything else."""

    classes: dict[str, list[str]]
    skipped: list[str] = field(default_factory=list)  # relative to SRC: non-images, hidden, loose files
    empty: list[str] = field(default_factory=list)  # class folders without a single image


# ─── arithmetic ────────────────────────────────────────────────────────────────────────────────


def check_ratios(ratios: list[float]) -> tuple[float, ...]:
    if len(ratios) not in (2, 3):
        raise UserError(f"--ratios takes 2 (train valid) or 3 (train valid test) numbers, got {len(ratios)}")
    if any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise UserError(f"--ratios must all be positive, got {' '.join(map(str, ratios))}")
    if abs(sum(ratios) - 1.0) > RATIO_TOLERANCE:
        raise UserError(f"--ratios must sum to 1, got {' '.join(map(str, ratios))} (sum {sum(ratios):g})")
    return tuple(r / sum(ratios) for r in ratios)  # exactly 1, so counts can never overshoot


def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Per-split counts summing exactly to n (largest remainder, ties → earlier split); train ≥ 1 when n ≥ 1."""
    quotas = [n * r for r in ratios]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n and counts[0] == 0:  # a tiny class with a small train share: training needs every class
        donor = max(range(1, len(counts)), key=lambda i: (counts[i], i))  # ties: test gives before valid
        counts[donor] -= 1
        counts[0] += 1
    return counts


def assign(
    files: list[str], ratios: tuple[float, ...], seed: int, cls: str, group_of: dict[str, int] | None = None
) -> dict[str, list[str]]:
    """Shuffle a class's sorted files with a (seed, class)-seeded RNG and cut them by split_counts.

    Files with the same `group_of` key (copies of one image) move as one unit: a unit goes to the split
    its first file's position falls in, so counts may then differ from split_counts by the unit sizes.
    Without groups every unit is one file and the cut is exactly split_counts."""
    units: dict[object, list[str]] = {}
    for f in sorted(files):
        units.setdefault(group_of.get(f, f) if group_of else f, []).append(f)
    order = list(units.values())
    random.Random(f"{seed}/{cls}").shuffle(order)  # string seeds hash with sha512: stable across runs
    ends = list(itertools.accumulate(split_counts(len(files), ratios)))
    out: dict[str, list[str]] = {name: [] for name in SPLITS[: len(ratios)]}
    start = 0
    for unit in order:
        k = next(k for k, end in enumerate(ends) if start < end)
        out[SPLITS[k]].extend(unit)
        start += len(unit)
    return {name: sorted(v) for name, v in out.items()}


def duplicate_groups(src: Path, classes: dict[str, list[str]]) -> dict[str, int]:
    """{"class/rel": group id} for images with an exact or near copy anywhere in SRC (other classes too)."""
    keys = [f"{cls}/{rel}" for cls, files in classes.items() for rel in files]
    prints, _ = fingerprints([str(src / k) for k in keys])
    pairs = exact_pairs([fp.digest for fp in prints]) + list(near_pairs([fp.dhash for fp in prints]))
    root = groups(len(keys), pairs)
    size = Counter(root)
    return {k: r for k, r in zip(keys, root) if size[r] > 1}


def plan_splits(
    source: Source, src: Path, ratios: tuple[float, ...], seed: int, dedup: bool
) -> tuple[dict[str, dict[str, list[str]]], list[list[str]]]:
    """(per class: split → files, groups of copies). A group whose copies sit in several class folders
    (copies with different labels) follows the split of its first member, so no copy crosses splits."""
    group_of = duplicate_groups(src, source.classes) if dedup else {}
    plan = {
        cls: assign(
            files, ratios, seed, cls, {f: group_of[f"{cls}/{f}"] for f in files if f"{cls}/{f}" in group_of}
        )
        for cls, files in source.classes.items()
    }
    where = {f"{cls}/{f}": s for cls, splits in plan.items() for s, files in splits.items() for f in files}
    members: dict[int, list[str]] = {}
    for key, g in group_of.items():
        members.setdefault(g, []).append(key)
    for keys in members.values():
        target = where[min(keys)]
        for key in keys:
            cls, rel = key.split("/", 1)
            if where[key] != target:
                plan[cls][where[key]].remove(rel)
                plan[cls][target] = sorted([*plan[cls][target], rel])
    return plan, sorted(sorted(keys) for keys in members.values())


# ─── source and destination ────────────────────────────────────────────────────────────────────


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _class_images(folder: Path, source: Source) -> list[str]:
    """Image paths under one class folder (relative to it); everything else goes to source.skipped."""
    images = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if is_image_file(path) and not _hidden(rel):
            images.append(rel.as_posix())
        else:
            source.skipped.append(f"{folder.name}/{rel.as_posix()}")
    return images


def scan_source(src: Path) -> Source:
    """Class folders are SRC's visible subfolders; images may sit in nested folders, as ImageFolder allows."""
    if not src.is_dir():
        raise UserError(f"SRC {src} is not a folder; pass the folder that holds one subfolder per class")
    refuse_already_split(src)
    source = Source(classes={})
    for entry in sorted(src.iterdir()):
        if entry.is_dir() and is_class_folder(entry.name):
            images = _class_images(entry, source)
            if images:
                source.classes[entry.name] = images
            else:
                source.empty.append(entry.name)
        elif entry.is_file() and entry.name != LABEL_MAP:
            source.skipped.append(entry.name)
    if not source.classes:
        raise UserError(
            f"SRC {src} has no class folder with images in it; expected SRC/<class>/<image files>"
        )
    return source


# train/data.py's split folder names (train/ imports core/ only, so they are repeated here, not imported)
_SPLIT_NAMES = ("train", "valid", "val", "validation", "test")


def refuse_already_split(src: Path) -> None:
    """A folder that already holds train/ beside valid/ or test/ would become classes named after splits."""
    found = [n for n in _SPLIT_NAMES if (src / n).is_dir()]
    if "train" in found and len(found) > 1:
        raise UserError(
            f"SRC {src} is already split (it holds {', '.join(n + '/' for n in found)}); "
            f"train on it directly with data.root={src}, or pass the folder of class folders"
        )


def check_destination(src: Path, dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise UserError(f"DST {dst} is a file; pass a new or empty folder")
    if dst.is_dir() and any(dst.iterdir()):
        raise UserError(f"DST {dst} is not empty; pass a new or empty folder (nothing was written)")
    if dst.resolve().is_relative_to(src.resolve()):
        raise UserError(f"DST {dst} lies inside SRC {src}; pick a folder outside it")


# ─── transfer ──────────────────────────────────────────────────────────────────────────────────

_LINK_FALLBACK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK}


def _link(a: Path, b: Path) -> None:
    """Hard link; across file systems (or where hard links are refused) an absolute symlink instead."""
    try:
        os.link(
            os.path.realpath(a), b
        )  # link() would link a symlink itself; a relative one then dangles in DST
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK_ERRNOS:
            raise
        try:
            os.symlink(a.resolve(), b)
        except OSError as exc2:
            raise UserError(
                f"cannot hard link or symlink {a} into DST ({exc2.strerror}); use --copy"
            ) from None


TRANSFER: dict[str, Callable[[Path, Path], object]] = {
    "copy": shutil.copy2,
    "link": _link,
    "move": shutil.move,
}


def check_movable(plan: dict[str, dict[str, list[str]]], src: Path) -> None:
    """--move would carry a symlink over as it is; a relative one then points nowhere. Refuse before moving."""
    links = [
        f"{cls}/{rel}"
        for cls, splits in plan.items()
        for files in splits.values()
        for rel in files
        if (src / cls / rel).is_symlink()
    ]
    if links:
        raise UserError(
            f"SRC holds {len(links)} symlinked image(s) (e.g. {links[0]}) that --move would break; "
            "use --copy or --link, or replace the links with the files (nothing was moved)"
        )


def _pairs(plan: dict[str, dict[str, list[str]]], src: Path, stage: Path):
    for cls, splits in plan.items():
        for split, files in splits.items():
            for rel in files:
                yield src / cls / rel, stage / split / cls / rel


def _move_back(done: list[tuple[Path, Path]]) -> list[str]:
    """Undo moves newest first; return what could not be put back (it stays in the staging folder)."""
    stuck = []
    for a, b in reversed(done):
        try:
            shutil.move(b, a)
        except OSError:
            stuck.append(str(b))
    return stuck


def _undo(stage: Path, done: list[tuple[Path, Path]], mode: str) -> str:
    """Clean up after a failed transfer; return what became of the files, for the error line."""
    stuck = _move_back(done) if mode == "move" else []
    if stuck:
        return (
            f"{len(stuck)} moved files could not be put back; they are in {stage} (origins in {stage / PLAN})"
        )
    shutil.rmtree(stage, ignore_errors=True)
    return "every moved file was put back" if mode == "move" else "nothing was written to DST"


def transfer(plan: dict[str, dict[str, list[str]]], src: Path, stage: Path, mode: str) -> None:
    done: list[tuple[Path, Path]] = []
    a = src
    try:
        for a, b in _pairs(plan, src, stage):
            b.parent.mkdir(parents=True, exist_ok=True)
            TRANSFER[mode](a, b)
            done.append((a, b))
    except OSError as exc:  # disk full, permissions, a file vanishing: fixable, so one line
        raise UserError(f"{mode} failed at {a}: {exc.strerror or exc}; {_undo(stage, done, mode)}") from None
    except BaseException as exc:  # Ctrl-C included
        print(f"interrupted: {_undo(stage, done, mode)}", file=sys.stderr, flush=True)
        if isinstance(exc, KeyboardInterrupt):
            raise SystemExit(EXIT_INTERRUPTED) from None  # said above: no second line, no traceback
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # os.umask only reads by setting; put it straight back
    os.umask(mask)
    return mask


# ─── the command ───────────────────────────────────────────────────────────────────────────────


def build_manifest(
    args: argparse.Namespace, ratios: tuple[float, ...], source: Source, plan: dict[str, dict[str, list[str]]]
) -> dict:
    names = SPLITS[: len(ratios)]
    return {
        "src": str(Path(args.src).resolve()),
        "mode": args.mode,
        "seed": args.seed,
        "ratios": dict(zip(names, ratios)),
        "counts": {cls: {s: len(plan[cls][s]) for s in names} for cls in plan},
        "totals": {s: sum(len(plan[cls][s]) for cls in plan) for s in names},
        "skipped": source.skipped,
        "empty_classes": source.empty,
        "files": {cls: {s: plan[cls][s] for s in names} for cls in plan},
    }


def summary(manifest: dict, dst: Path) -> str:
    counts, totals = manifest["counts"], manifest["totals"]
    lines = [f"{'split':<6} {'classes':>7} {'images':>7}"]
    for split, total in totals.items():
        lines.append(f"{split:<6} {sum(1 for c in counts.values() if c[split]):>7} {total:>7}")
    lines.append(f"{'total':<6} {len(counts):>7} {sum(totals.values()):>7}  ({manifest['mode']} → {dst})")
    short = [c for c, n in counts.items() if not all(n.values())]
    if short:
        lines.append(
            f"note: {len(short)} class(es) too small for every split (e.g. {short[0]}: "
            f"{counts[short[0]]}); they are absent from the splits that got none"
        )
    if manifest.get("duplicate_groups"):
        groups_ = manifest["duplicate_groups"]
        lines.append(
            f"kept {len(groups_)} group(s) of copies ({sum(map(len, groups_))} images, exact or near) "
            f"inside one split each; listed in {MANIFEST} under duplicate_groups"
        )
    if manifest["empty_classes"]:
        lines.append(
            f"note: {len(manifest['empty_classes'])} class folder(s) hold no images and were left out: "
            f"{', '.join(manifest['empty_classes'][:SHOW_SKIPPED])}"
        )
    if manifest["skipped"]:
        lines.append(
            f"skipped {len(manifest['skipped'])} files that are not images (listed in {MANIFEST}): "
            f"{', '.join(manifest['skipped'][:SHOW_SKIPPED])}"
        )
    return "\n".join(lines)


def make_stage(src: Path, dst: Path, manifest: dict) -> Path:
    """The hidden folder beside DST that becomes DST, holding the plan and the label map before any image."""
    stage = None
    try:  # a failure here has touched nothing in SRC
        dst.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
        (stage / PLAN).write_text(json.dumps(manifest, indent=2) + "\n")
        if (src / LABEL_MAP).is_file():
            shutil.copy2(src / LABEL_MAP, stage / LABEL_MAP)
        return stage
    except OSError as exc:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        raise UserError(f"cannot write into {dst.parent}: {exc.strerror or exc}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="imgclf-split", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="folder with one subfolder of images per class")
    p.add_argument("dst", help="new or empty folder to create train/ valid/ [test/] in")
    p.add_argument(
        "--ratios",
        type=float,
        nargs="+",
        default=[0.75, 0.125, 0.125],
        help="train valid [test] shares, positive, summing to 1 (default 0.75 0.125 0.125)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--copy",
        dest="mode",
        action="store_const",
        const="copy",
        help="copy files (default: SRC untouched, DST independent of it)",
    )
    mode.add_argument(
        "--link",
        dest="mode",
        action="store_const",
        const="link",
        help="hard link (symlink across file systems): no extra space, DST shares SRC's files",
    )
    mode.add_argument(
        "--move",
        dest="mode",
        action="store_const",
        const="move",
        help="move files out of SRC (planned first, undone on failure)",
    )
    p.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        help="skip the copy search (file hash + dHash of every image) that keeps copies of one image "
        "inside one split",
    )
    p.set_defaults(mode="copy")
    return p.parse_args(argv)


@command  # Ctrl-C at any moment: one line, exit 130
@cli_entry
def main(argv: list[str] | None = None) -> int:
    started()
    args = parse_args(argv)
    ratios = check_ratios(args.ratios)
    src, dst = Path(args.src), Path(args.dst)
    source = scan_source(src)
    check_destination(src, dst)
    plan, copies = plan_splits(source, src, ratios, args.seed, args.dedup)
    if args.mode == "move":
        check_movable(plan, src)
    manifest = build_manifest(args, ratios, source, plan)
    manifest["duplicate_groups"] = copies
    stage = make_stage(src, dst, manifest)
    transfer(plan, src, stage, args.mode)
    (stage / PLAN).rename(stage / MANIFEST)
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp made it 0700; DST should look like a plain mkdir
    os.replace(stage, dst)  # replaces an empty DST folder too
    print(summary(manifest, dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
