"""Hostile inputs: special files and huge files, names that are not UTF-8, and overlapping inputs."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from serve.discover import Item, iter_items
from serve.pathnames import escape_path, unescape_path
from serve.sources import SourceError, read_bytes
from tests.serve.helpers import read_rows, save_picture, serve
from tests.serve.test_cli import http_root  # noqa: F401 - the fixture

MB = 2**20


def _read_within(item: Item, seconds: float = 10.0) -> str:
    """read_bytes' outcome ('ok' or the error reason), failing the test if it blocks."""
    result: list[str] = []

    def target():
        try:
            read_bytes(item)
            result.append("ok")
        except SourceError as exc:
            result.append(str(exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"reading {item.source} blocked for {seconds} s"
    return result[0]


# ─── only regular files, with a size cap ──────────────────────────────────────────────────────


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert "not a regular file (a FIFO" in _read_within(Item(str(fifo), "x.jpg"))


def test_a_file_over_the_cap_is_refused_unread_even_when_sparse(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as fh:
        fh.truncate(300 * MB)  # sparse: no disk used, but a plain read() would allocate 300 MB
    assert "--max-file-mb" in _read_within(Item(str(big), "big.jpg"))
    assert "--max-file-mb" in _read_within(Item(str(big), "big.jpg", max_bytes=MB))


def test_symlinks_are_judged_by_their_target(tmp_path):
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    save_picture(tmp_path / "real.png")
    (tmp_path / "good.jpg").symlink_to(tmp_path / "real.png")
    assert "not a regular file (a character device" in _read_within(Item(str(tmp_path / "zero.jpg"), "z"))
    assert _read_within(Item(str(tmp_path / "good.jpg"), "g")) == "ok"


def test_every_special_file_is_an_error_row_and_the_run_finishes(bundle, tmp_path):
    folder = tmp_path / "in"
    save_picture(folder / "a.png")
    os.mkfifo(folder / "b_fifo.jpg")
    (folder / "c_zero.jpg").symlink_to("/dev/zero")
    with open(folder / "d_sparse.jpg", "wb") as fh:
        fh.truncate(3 * MB)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "e_socket.jpg"))
    save_picture(folder / "f_big.png", size=(1200, 1000), compress_level=0)  # ~3.6 MB, a valid image
    out = tmp_path / "p.csv"
    try:
        assert serve(bundle, folder, "--out", out, "--workers", 0, "--max-file-mb", 2) == 0
    finally:
        sock.close()
    rows = {r["path"]: r for r in read_rows(out)}
    assert list(rows) == ["a.png", "b_fifo.jpg", "c_zero.jpg", "d_sparse.jpg", "e_socket.jpg", "f_big.png"]
    assert rows["a.png"]["status"] == "ok"
    for name, reason in [
        ("b_fifo.jpg", "FIFO"),
        ("c_zero.jpg", "character device"),
        ("d_sparse.jpg", "--max-file-mb"),
        ("e_socket.jpg", "socket"),
        ("f_big.png", "--max-file-mb"),
    ]:
        assert rows[name]["status"] == "error" and reason in rows[name]["error"], rows[name]


def test_a_download_over_the_cap_is_an_error_row(bundle, http_root, tmp_path):  # noqa: F811
    www, base = http_root
    save_picture(www / "big.png", size=(1200, 1000), compress_level=0)
    save_picture(www / "small.png")
    out = tmp_path / "p.csv"
    serve(bundle, f"{base}/big.png", f"{base}/small.png", "--out", out, "--workers", 0, "--max-file-mb", 1)
    big, small = read_rows(out)
    assert big["status"] == "error" and "--max-file-mb" in big["error"]
    assert small["status"] == "ok"


def test_max_file_mb_must_be_positive(bundle, tmp_path, capsys):
    save_picture(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exc:
        serve(bundle, tmp_path / "a.png", "--out", tmp_path / "p.csv", "--max-file-mb", 0)
    assert exc.value.code == 2 and "--max-file-mb must be positive" in capsys.readouterr().err


# ─── any file name ────────────────────────────────────────────────────────────────────────────

NASTY = [b"caf\xe9.jpg", b"back\\slash.png", b"lit\\xff.png", b'new\nline, "quoted".png', "été.png".encode()]


@pytest.mark.parametrize("name", [*NASTY, b"\\", b"\xff\xfe\\\\x", b"plain.jpg"])
def test_path_escaping_round_trips_and_is_utf8(name):
    cell = escape_path(os.fsdecode(name))
    cell.encode("utf-8")  # no lone surrogates left
    assert os.fsencode(unescape_path(cell)) == name


def _nasty_folder(root):
    root.mkdir()
    for i, name in enumerate(NASTY):
        save_picture(root / os.fsdecode(name), seed=i)
    return root


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_utf8_names_get_rows_and_resume_recognises_them(bundle, tmp_path, fmt):
    folder = _nasty_folder(tmp_path / "in")
    out = tmp_path / f"p.{fmt}"
    assert serve(bundle, folder, "--out", out, "--workers", 0) == 0
    rows = _rows(out, fmt)
    assert sorted(os.fsencode(unescape_path(r["path"])) for r in rows) == sorted(NASTY)
    assert all(r["status"] == "ok" for r in rows)
    save_picture(folder / os.fsdecode(b"z\xff.png"), seed=9)
    assert serve(bundle, folder, "--out", out, "--workers", 0, "--resume") == 0
    again = _rows(out, fmt)
    assert [r["path"] for r in again] == [r["path"] for r in rows] + ["z\\xff.png"]


def _rows(path, fmt):
    if fmt == "csv":
        return read_rows(path)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ─── one row per file ─────────────────────────────────────────────────────────────────────────


def test_overlapping_inputs_give_each_file_once_named_by_the_first_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rel in ["D/a.jpg", "D/sub/b.jpg", "E/c.jpg"]:
        save_picture(tmp_path / rel)
    os.symlink("D/a.jpg", "link.jpg")
    inputs = ["D/sub/b.jpg", "D", "D/", "D/.", "D/sub", "link.jpg", "D/a.jpg", "E", "E/c.jpg"]
    assert [i.path for i in iter_items(inputs)] == ["D/sub/b.jpg", "D/a.jpg", "E/c.jpg"]


def test_the_same_folder_twice_classifies_each_file_once(bundle, photos, tmp_path):
    out = tmp_path / "p.csv"
    serve(bundle, photos, f"{photos}/", f"{photos}/.", photos / "1", "--out", out, "--workers", 0)
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == 6
