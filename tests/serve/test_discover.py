"""Discovery: a lazy, sorted, recursive walk that skips hidden files and survives symlink loops."""

from __future__ import annotations

import os

import pytest

from core.errors import UserError
from serve import discover
from serve.discover import check_inputs, iter_items


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _walked(folder) -> list[str]:
    """The rows' paths for one folder given to serve: relative to it."""
    return [item.path for item in iter_items([str(folder)])]


def test_walk_is_recursive_sorted_and_case_insensitive(tmp_path):
    for rel in ["b/2.JPG", "b/10.png", "a/z.jpeg", "a/sub/y.WebP", "top.Tif", "notes.txt", "a/sub/data.csv"]:
        _touch(tmp_path / rel)
    assert _walked(tmp_path) == [
        "a/sub/y.WebP",
        "a/z.jpeg",
        "b/10.png",
        "b/2.JPG",
        "top.Tif",
    ]


def test_walk_skips_hidden_files_folders_and_ds_store(tmp_path):
    for rel in ["keep.jpg", ".hidden.jpg", ".DS_Store", ".cache/inside.jpg", "d/._resource.jpg"]:
        _touch(tmp_path / rel)
    assert _walked(tmp_path) == ["keep.jpg"]


def test_walk_survives_a_symlink_loop_and_lists_each_folder_once(tmp_path):
    _touch(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a/loop → root: a cycle
    os.symlink(tmp_path / "a", tmp_path / "alias")  # a second name for a/
    assert _walked(tmp_path) == ["a/x.jpg"]


def test_walk_is_lazy_first_image_before_the_rest_is_listed(tmp_path, monkeypatch):
    _touch(tmp_path / "a" / "first.jpg")
    for i in range(20):
        _touch(tmp_path / f"d{i:02d}" / "later.jpg")
    listed = []
    real = os.scandir
    monkeypatch.setattr(discover.os, "scandir", lambda p: (listed.append(p), real(p))[1])
    first = next(iter_items([str(tmp_path)]))
    assert first.path == "a/first.jpg"
    assert len(listed) == 2  # root and a/, not the 20 other folders


def test_single_folder_paths_are_relative_to_it_and_absolute_on_request(tmp_path):
    _touch(tmp_path / "in" / "c" / "x.jpg")
    assert [i.path for i in iter_items([str(tmp_path / "in")])] == ["c/x.jpg"]
    assert [i.path for i in iter_items([str(tmp_path / "in")], absolute=True)] == [
        str(tmp_path / "in" / "c" / "x.jpg")
    ]


def test_several_inputs_keep_their_prefix_so_equal_names_stay_distinct(tmp_path, monkeypatch):
    _touch(tmp_path / "dirA" / "x.jpg")
    _touch(tmp_path / "dirB" / "x.jpg")
    _touch(tmp_path / "one.png")
    monkeypatch.chdir(tmp_path)
    items = list(iter_items(["dirA", "dirB", "one.png", "https://example.org/f.jpg"]))
    assert [i.path for i in items] == ["dirA/x.jpg", "dirB/x.jpg", "one.png", "https://example.org/f.jpg"]
    assert not any(i.error for i in items)


def test_a_named_non_image_file_becomes_an_error_item(tmp_path):
    f = _touch(tmp_path / "readme.txt")
    (item,) = iter_items([str(f)])
    assert "not an image file" in item.error and ".txt" in item.error


def test_a_missing_input_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="input not found: .*nope"):
        check_inputs([str(tmp_path / "nope")])
