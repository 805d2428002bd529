"""train/split.py: exact per-class counts, seeded determinism, no file lost or duplicated, safe --move."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train import split

REPO = Path(__file__).resolve().parents[2]


def make_src(root: Path, sizes: dict[str, int]) -> Path:
    """SRC/<class>/img_<i>.png, every image a distinct 4x4 colour so file bytes identify it."""
    for c, (cls, n) in enumerate(sizes.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (c * 40, i, 255 - i)).save(root / cls / f"img_{i:03d}.png")
    return root


def digests(root: Path) -> Counter:
    """Multiset of the image contents under root (symlinks followed)."""
    return Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png") if p.is_file())


def run(*argv) -> int:
    try:
        return split.main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code


def manifest(dst: Path) -> dict:
    return json.loads((dst / split.MANIFEST).read_text())


def on_disk(dst: Path, split_name: str, cls: str) -> list[str]:
    folder = dst / split_name / cls
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def src(tmp_path) -> Path:
    return make_src(tmp_path / "src", {"cat": 10, "dog": 7, "eel": 1, "fox": 2, "gnu": 3})


# ─── counts ────────────────────────────────────────────────────────────────────────────────────


def test_counts_per_class_are_exact_on_disk_and_in_the_manifest(src, tmp_path):
    assert run(src, tmp_path / "dst") == 0
    expected = {"cat": [8, 1, 1], "dog": [5, 1, 1], "eel": [1, 0, 0], "fox": [2, 0, 0], "gnu": [2, 1, 0]}
    for cls, counts in expected.items():
        assert [len(on_disk(tmp_path / "dst", s, cls)) for s in split.SPLITS] == counts, cls
        assert list(manifest(tmp_path / "dst")["counts"][cls].values()) == counts


def test_largest_remainder_counts_sum_to_n_and_stay_within_one_of_the_exact_share():
    for ratios in [(0.75, 0.125, 0.125), (0.7, 0.2, 0.1), (0.8, 0.2), (1 / 3, 1 / 3, 1 / 3)]:
        for n in range(3, 60):
            counts = split.split_counts(n, ratios)
            assert sum(counts) == n
            assert all(abs(c - n * r) < 1 for c, r in zip(counts, ratios)), (n, ratios, counts)


def test_a_one_image_class_goes_to_train_even_when_train_has_the_smallest_share():
    assert split.split_counts(1, (0.1, 0.45, 0.45)) == [1, 0, 0]
    assert split.split_counts(2, (0.1, 0.45, 0.45)) == [1, 1, 0]
    assert split.split_counts(0, (0.75, 0.125, 0.125)) == [0, 0, 0]


def test_two_ratios_make_train_and_valid_only(src, tmp_path):
    assert run(src, tmp_path / "dst", "--ratios", 0.8, 0.2) == 0
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [split.MANIFEST, "train", "valid"]
    assert manifest(tmp_path / "dst")["counts"]["cat"] == {"train": 8, "valid": 2}


# ─── determinism ───────────────────────────────────────────────────────────────────────────────


def test_same_seed_gives_the_same_assignment_and_another_seed_a_different_one(src, tmp_path):
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        assert run(src, tmp_path / name, "--seed", seed) == 0
    files = {name: manifest(tmp_path / name)["files"] for name in "abc"}
    assert files["a"] == files["b"]
    assert files["a"]["cat"] != files["c"]["cat"]


def test_a_class_split_does_not_change_when_other_classes_are_added(tmp_path):
    few = make_src(tmp_path / "few", {"cat": 10})
    many = make_src(tmp_path / "many", {"ant": 9, "cat": 10, "zebra": 5})
    run(few, tmp_path / "d1")
    run(many, tmp_path / "d2")
    assert manifest(tmp_path / "d1")["files"]["cat"] == manifest(tmp_path / "d2")["files"]["cat"]


# ─── no loss, no duplicates ────────────────────────────────────────────────────────────────────


def test_copy_keeps_every_image_exactly_once_and_leaves_src_untouched(src, tmp_path):
    before = digests(src)
    assert run(src, tmp_path / "dst") == 0
    assert digests(tmp_path / "dst") == before
    assert digests(src) == before


def test_non_image_files_are_not_split_but_listed(src, tmp_path, capsys):
    (src / "cat" / "notes.txt").write_text("x")
    (src / "cat" / ".hidden.png").write_bytes(b"")
    (src / "labels.csv").write_text("x")
    assert run(src, tmp_path / "dst") == 0
    assert sorted(manifest(tmp_path / "dst")["skipped"]) == ["cat/.hidden.png", "cat/notes.txt", "labels.csv"]
    assert not list((tmp_path / "dst").rglob("notes.txt"))
    assert "skipped 3 files" in capsys.readouterr().out


def test_cat_to_name_json_is_copied_to_dst_in_every_mode(src, tmp_path):
    (src / "cat_to_name.json").write_text('{"cat": "Felis catus"}')
    assert run(src, tmp_path / "dst", "--move") == 0
    assert json.loads((tmp_path / "dst" / "cat_to_name.json").read_text()) == {"cat": "Felis catus"}
    assert (src / "cat_to_name.json").exists()
    assert manifest(tmp_path / "dst")["skipped"] == []


def test_move_empties_src_of_images_and_dst_holds_them_all(src, tmp_path):
    (src / "cat" / "notes.txt").write_text("x")
    before = digests(src)
    assert run(src, tmp_path / "dst", "--move") == 0
    assert digests(tmp_path / "dst") == before
    assert [p.name for p in src.rglob("*") if p.is_file()] == ["notes.txt"]


def test_a_failing_move_puts_every_moved_file_back(src, tmp_path, monkeypatch, capsys):
    before = digests(src)
    calls = []

    def flaky_move(a, b):
        calls.append(a)
        if len(calls) == 6:
            raise OSError(errno.EIO, "disk fell off")
        return os.replace(a, b)

    monkeypatch.setitem(split.TRANSFER, "move", flaky_move)
    assert run(src, tmp_path / "dst", "--move") == 2
    assert "disk fell off; every moved file was put back" in capsys.readouterr().err
    assert digests(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no DST, no staging folder


def test_a_failing_copy_is_one_error_line_and_leaves_no_partial_dst(src, tmp_path, monkeypatch, capsys):
    def no_space(a, b):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(split.TRANSFER, "copy", no_space)
    assert run(src, tmp_path / "dst") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: copy failed at ") and "nothing was written to DST" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_link_makes_hard_links_to_the_src_files(src, tmp_path):
    assert run(src, tmp_path / "dst", "--link") == 0
    first = manifest(tmp_path / "dst")["files"]["cat"]["train"][0]
    assert os.path.samefile(tmp_path / "dst" / "train" / "cat" / first, src / "cat" / first)


def test_link_falls_back_to_symlinks_across_file_systems(src, tmp_path, monkeypatch):
    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split.os, "link", cross_device)
    assert run(src, tmp_path / "dst", "--link") == 0
    linked = tmp_path / "dst" / "train" / "eel" / "img_000.png"
    assert linked.is_symlink() and linked.resolve() == (src / "eel" / "img_000.png").resolve()


# ─── refusals ──────────────────────────────────────────────────────────────────────────────────


def test_refuses_a_non_empty_dst_and_writes_nothing(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert run(src, dst) == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


def test_an_existing_empty_dst_is_filled(src, tmp_path):
    (tmp_path / "dst").mkdir()
    assert run(src, tmp_path / "dst") == 0
    assert digests(tmp_path / "dst") == digests(src)


@pytest.mark.parametrize(
    "ratios", [["0.5", "0.5", "0"], ["1.0"], ["0.5", "0.6"], ["0.25"] * 4, ["0.5", "nan"]]
)
def test_refuses_ratios_that_are_not_two_or_three_positive_shares_summing_to_one(
    src, tmp_path, ratios, capsys
):
    assert run(src, tmp_path / "dst", "--ratios", *ratios) == 2
    assert "--ratios" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_refuses_a_missing_src_or_one_without_images(tmp_path, capsys):
    assert run(tmp_path / "nope", tmp_path / "dst") == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("x")
    assert run(tmp_path / "empty", tmp_path / "dst") == 2
    assert "no class folder with images" in capsys.readouterr().err


def test_refuses_a_dst_inside_src(src, capsys):
    assert run(src, src / "splits") == 2
    assert "inside SRC" in capsys.readouterr().err


def test_refuses_an_already_split_folder_in_one_line_and_writes_nothing(tmp_path, capsys):
    """train/ valid/ test/ would otherwise become three classes named after the splits."""
    root = tmp_path / "data"
    for name in ("train", "valid", "test"):
        make_src(root / name, {"cat": 2, "dog": 2})
    assert run(root, tmp_path / "dst") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: SRC {root} is already split") and len(err.splitlines()) == 1
    assert "train/, valid/, test/" in err and f"data.root={root}" in err
    assert not (tmp_path / "dst").exists()


def test_a_class_named_train_alone_is_not_taken_for_a_split_folder(tmp_path):
    src = make_src(tmp_path / "src", {"train": 3, "boat": 3})
    assert run(src, tmp_path / "dst", "--ratios", "0.5", "0.5") == 0
    assert on_disk(tmp_path / "dst", "train", "train")


def test_cli_as_a_script_prints_the_summary_and_exits_2_without_traceback(src, tmp_path):
    cmd = [sys.executable, str(REPO / "train" / "split.py"), str(src), str(tmp_path / "dst")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's core/, not an installed copy
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1].split() == ["train", "5", "18"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False, env=env)
    assert again.returncode == 2
    assert again.stderr.startswith("error: DST") and "Traceback" not in again.stderr


# ─── symlinked files ───────────────────────────────────────────────────────────────────────────


def _relative_links(src: Path, cls: str, target: str, n: int) -> None:
    """n relative symlinks to one file of the class: the seeded shuffle scatters them over the splits."""
    for i in range(n):
        os.symlink(target, src / cls / f"link_{i}.png")


def test_link_of_a_relative_symlink_in_src_links_the_image_not_a_dangling_link(src, tmp_path):
    _relative_links(src, "cat", "img_000.png", 6)
    assert run(src, tmp_path / "dst", "--link") == 0
    linked = sorted((tmp_path / "dst").rglob("link_*.png"))
    assert len(linked) == 6 and all(p.exists() for p in linked)
    assert all(os.path.samefile(p, src / "cat" / "img_000.png") for p in linked)


def test_move_refuses_symlinked_files_before_touching_src(src, tmp_path, capsys):
    _relative_links(src, "cat", "img_000.png", 1)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    assert run(src, tmp_path / "dst", "--move") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cat/link_0.png" in err and "--copy" in err
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ─── copies of one image stay in one split ─────────────────────────────────────────────────────


def photo(seed: int, size=(96, 72)) -> Image.Image:
    """A smooth image with structure (a random 8x6 colour field upsampled): a dHash has bits to compare."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(low).resize(size, Image.Resampling.BICUBIC)


def make_photo_src(root: Path, n: int = 12) -> Path:
    """cat/ and dog/, n distinct photos each, plus copies: exact (same bytes), resized + re-encoded, and
    one photo of cat/ also filed under dog/ (a copy with another label)."""
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            photo(100 * c + i).save(root / cls / f"p{i:02d}.jpg", quality=90)
    (root / "cat" / "p00_copy.jpg").write_bytes((root / "cat" / "p00.jpg").read_bytes())
    (root / "cat" / "p00_copy2.jpg").write_bytes((root / "cat" / "p00.jpg").read_bytes())
    photo(1, (192, 144)).save(root / "cat" / "p01_big.jpg", quality=75)
    photo(2, (48, 36)).save(root / "cat" / "p02_small.png")
    (root / "dog" / "p03_from_cat.jpg").write_bytes((root / "cat" / "p03.jpg").read_bytes())
    return root


def where(dst: Path, cls: str, name: str) -> str:
    return next(s for s in split.SPLITS if (dst / s / cls / name).exists())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_copies_of_one_image_land_in_one_split_also_across_classes(tmp_path, seed):
    src = make_photo_src(tmp_path / "src")
    dst = tmp_path / f"dst{seed}"
    assert run(src, dst, "--ratios", "0.5", "0.25", "0.25", "--seed", seed) == 0
    assert (
        where(dst, "cat", "p00.jpg")
        == where(dst, "cat", "p00_copy.jpg")
        == where(dst, "cat", "p00_copy2.jpg")
    )
    assert where(dst, "cat", "p01.jpg") == where(dst, "cat", "p01_big.jpg")
    assert where(dst, "cat", "p02.jpg") == where(dst, "cat", "p02_small.png")
    assert where(dst, "cat", "p03.jpg") == where(dst, "dog", "p03_from_cat.jpg")
    groups = manifest(dst)["duplicate_groups"]
    assert sorted(map(len, groups)) == [2, 2, 2, 3]
    assert ["cat/p03.jpg", "dog/p03_from_cat.jpg"] in groups
    assert sum(manifest(dst)["totals"].values()) == 29  # every image placed exactly once


def test_without_copies_the_grouped_split_equals_the_plain_one(tmp_path):
    src = make_photo_src(tmp_path / "src")
    for p in src.rglob("*_*"):
        p.unlink()  # only the distinct photos remain
    assert run(src, tmp_path / "a", "--seed", "5") == 0
    assert run(src, tmp_path / "b", "--seed", "5", "--no-dedup") == 0
    assert manifest(tmp_path / "a")["files"] == manifest(tmp_path / "b")["files"]
    assert manifest(tmp_path / "a")["duplicate_groups"] == []


def test_no_dedup_lets_copies_fall_in_different_splits(tmp_path):
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    photo(0).save(src / "cat" / "a.jpg")
    for i in range(40):
        (src / "cat" / f"copy{i:02d}.jpg").write_bytes((src / "cat" / "a.jpg").read_bytes())
    assert run(src, tmp_path / "plain", "--no-dedup") == 0
    assert len(list((tmp_path / "plain" / "test" / "cat").iterdir())) > 0
    assert run(src, tmp_path / "grouped") == 0
    assert not (tmp_path / "grouped" / "test").exists() or not any(
        (tmp_path / "grouped" / "test").rglob("*.jpg")
    )


def test_a_unit_goes_to_the_split_its_first_file_falls_in():
    files = [f"f{i}" for i in range(8)]
    plain = split.assign(files, (0.5, 0.25, 0.25), 3, "c")
    grouped = split.assign(files, (0.5, 0.25, 0.25), 3, "c", {"f0": 0, "f1": 0, "f2": 0})
    assert plain == split.assign(files, (0.5, 0.25, 0.25), 3, "c", {})
    home = next(s for s, v in grouped.items() if "f0" in v)
    assert {"f0", "f1", "f2"} <= set(grouped[home])
    assert sorted(sum(grouped.values(), [])) == sorted(files)
