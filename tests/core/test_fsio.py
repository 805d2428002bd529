"""core.fsio's folder swap: a crash between its two renames never costs the last complete version."""

from __future__ import annotations

import os

import pytest

from core import fsio
from core.fsio import recover_dir, swap_dir


def _folder(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def _crash_on_rename(monkeypatch, n):
    """os.replace raises on its n-th call (1-based), as if the process died there."""
    calls, real = [], os.replace

    def replace(src, dst):
        calls.append(src)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        real(src, dst)

    monkeypatch.setattr(fsio.os, "replace", replace)


def _crashed_between_the_renames(tmp_path, monkeypatch, new_name: str):
    """last/ holds v1; a swap to v2 (built in tmp_path/new_name) dies after moving v1 aside."""
    dest = _folder(tmp_path / "last", "v1")
    _crash_on_rename(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        swap_dir(_folder(tmp_path / new_name, "v2"), dest)
    monkeypatch.undo()
    return dest


def test_a_crash_between_the_renames_is_undone_by_recover_dir(tmp_path, monkeypatch):
    dest = _crashed_between_the_renames(tmp_path, monkeypatch, ".last.tmp")
    assert not dest.exists() and (tmp_path / ".last.old").is_dir()
    assert recover_dir(dest)
    assert (dest / "f.txt").read_text() == "v1"


def test_the_next_swap_after_such_a_crash_never_deletes_the_only_complete_version(tmp_path, monkeypatch):
    dest = _crashed_between_the_renames(tmp_path, monkeypatch, "new2")
    # nobody recovered; the next save dies at the same point: v1 must still be there to recover
    _crash_on_rename(monkeypatch, 3)  # its own recovery rename, then moving v1 aside, then (dies) v3 in
    with pytest.raises(KeyboardInterrupt):
        swap_dir(_folder(tmp_path / "new3", "v3"), dest)
    monkeypatch.undo()
    recover_dir(dest)
    assert (dest / "f.txt").read_text() == "v1"


def test_a_swap_after_such_a_crash_completes_and_leaves_no_old_copy(tmp_path, monkeypatch):
    dest = _crashed_between_the_renames(tmp_path, monkeypatch, "new2")
    swap_dir(_folder(tmp_path / "new3", "v3"), dest)
    assert (dest / "f.txt").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "new2"]
