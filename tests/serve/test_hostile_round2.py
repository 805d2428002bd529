"""Hostile input, round 2 (issue 19), serve side: memory, time and depth bounded before the work (M1, M2,
M3, M6). Records, numbers, cells and Ctrl-C are in test_hostile_round2_outputs.py. Each test is named for its
item."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tests.serve.helpers import SERVE, read_rows, save_picture, serve, subprocess_env

# Baseline serve (torch, onnxruntime imported) peaks near 4 GB of address space and 1 GB RSS on the
# 2-core box; the cap leaves 2 GB of room for the work itself.
AS_CAP = 6 << 30


def run_capped(*argv, cap: int = AS_CAP, timeout: float = 300) -> subprocess.CompletedProcess:
    """serve in a subprocess under an address-space cap: a regression fails the test, not the machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run(
        [sys.executable, str(SERVE), *map(str, argv)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


# ─── M1: resize output bounded before any resize ──────────────────────────────────────────────


def test_m1_a_thin_image_is_an_error_row_not_gigabytes(bundle, tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (2, 1_000_000), (10, 20, 30)).save(tmp_path / "in" / "thin.png")
    save_picture(tmp_path / "in" / "ok.png")
    out = tmp_path / "p.csv"
    r = run_capped(bundle, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["path"]: row for row in read_rows(out)}
    assert rows["ok.png"]["status"] == "ok"
    assert rows["thin.png"]["status"] == "error"
    assert "too elongated to resize" in rows["thin.png"]["error"]


def test_m1_the_bound_is_64_times_the_input_area():
    from core.images import TooElongated, check_resize_output

    check_resize_output(12544, 256, 256, 224)  # 49:1 at 256/224 fits
    with pytest.raises(TooElongated):
        check_resize_output(13000, 256, 256, 224)
    with pytest.raises(TooElongated):
        check_resize_output(2, 1_000_000, 37, 32)


def test_m1_export_samples_skip_thin_images_with_a_warning(tmp_path, capsys):
    from core.preprocess import EvalSpec
    from export.samples import load_samples

    root = tmp_path / "calib" / "1"
    save_picture(root / "a.png")
    Image.new("RGB", (3000, 2), (1, 2, 3)).save(root / "pano.png")
    samples = load_samples(tmp_path / "calib", EvalSpec(resize=37, crop=32), ["1"], 10, "calib_images")
    assert len(samples.paths) == 1 and "too elongated" in samples.skipped[0]["reason"]
    assert "1 image(s) under" in capsys.readouterr().err


# ─── M2: bytes in flight bounded across readers and workers ───────────────────────────────────


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(size)  # reads back as zeros (not an image) without using the disk
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_m2_bytes_in_flight_stay_within_the_budget(tmp_path, workers):
    from core.preprocess import EvalSpec
    from serve.decode import DecodePipeline
    from serve.discover import iter_items

    for i in range(12):
        _sparse(tmp_path / "in" / f"{i:02d}.png", 20 << 20)
    items = list(iter_items([str(tmp_path / "in")]))
    spec = EvalSpec(resize=37, crop=32)
    with DecodePipeline(spec, workers=workers, threads=8, max_inflight_bytes=48 << 20) as pipe:
        batches = list(pipe.batches(items, batch_size=12))
    assert sum(len(b.items) for b in batches) == 12
    assert all("not an image" in e for b in batches for e in b.errors)
    assert pipe.budget.peak <= 48 << 20 and pipe.budget.used == 0


def test_m2_one_file_larger_than_the_budget_goes_through_alone(tmp_path):
    from core.preprocess import EvalSpec
    from serve.decode import DecodePipeline
    from serve.discover import iter_items

    _sparse(tmp_path / "in" / "big.png", 8 << 20)
    save_picture(tmp_path / "in" / "small.png")
    items = list(iter_items([str(tmp_path / "in")]))
    with DecodePipeline(EvalSpec(resize=37, crop=32), max_inflight_bytes=1 << 20) as pipe:
        (batch,) = list(pipe.batches(items, batch_size=4))
    assert batch.errors[0].startswith("not an image") and batch.errors[1] == ""


def test_m2_many_files_under_the_cap_run_in_bounded_memory(bundle, tmp_path):
    for i in range(40):
        _sparse(tmp_path / "in" / f"{i:02d}.png", 100 << 20)
    out = tmp_path / "p.csv"
    r = run_capped(
        bundle, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress", "--batch-size", 16,
        "--max-file-mb", 128, "--max-inflight-mb", 256,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_rows(out)
    assert len(rows) == 40 and all(row["status"] == "error" for row in rows)


def test_m2_the_budget_flag_is_in_help(capsys):
    with pytest.raises(SystemExit):
        serve("--help")
    assert "--max-inflight-mb" in capsys.readouterr().out


# ─── M3: one deadline for a whole URL fetch ───────────────────────────────────────────────────


class _Trickle(BaseHTTPRequestHandler):
    """/body: headers at once, then one byte a second; /head: the status line itself one byte a second."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            if self.path == "/head":
                for ch in b"HTTP/1.1 200 OK\r\n" * 30:
                    self.wfile.write(bytes([ch]))
                    self.wfile.flush()
                    time.sleep(1)
                return
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1)
        except OSError:  # the client gave up: what the test wants
            return

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("where", ["body", "head"])
def test_m3_url_deadline(bundle, tmp_path, where):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        img = save_picture(tmp_path / "ok.png")
        url = f"http://127.0.0.1:{server.server_address[1]}/{where}"
        out = tmp_path / "p.csv"
        start = time.monotonic()
        code = serve(bundle, url, img, "--out", out, "--timeout", 2, "--workers", 0, "--no-progress")
        took = time.monotonic() - start
    finally:
        server.shutdown()
    rows = {r["path"]: r for r in read_rows(out)}
    assert code == 0 and rows["ok.png"]["status"] == "ok"  # relative to its folder, the base
    assert rows[url]["status"] == "error" and "within --timeout 2 s" in rows[url]["error"]
    assert took < 60  # a 1 byte/s trickle of 1000 bytes would take 1000 s


# ─── M6: deep trees walk iteratively ──────────────────────────────────────────────────────────


def make_deep(root: Path, depth: int, name: str = "d") -> Path:
    """root/d/d/.../d (depth levels) built with dir_fd, so no path past the OS limit is ever spelled."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        with open(save_picture(root.parent / "_pic.png"), "rb") as src:
            data = src.read()
        out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return root


def remove_deep(root: Path) -> None:
    """shutil.rmtree recurses on Python 3.11 and a path past PATH_MAX cannot be named: walk down by
    relative chdir, then remove from the bottom up."""
    cwd, names = os.getcwd(), []
    try:
        os.chdir(root)
        while dirs := [e.name for e in os.scandir(".") if e.is_dir(follow_symlinks=False)]:
            os.chdir(dirs[0])
            names.append(dirs[0])
        while True:
            for e in os.scandir("."):
                if not e.is_dir(follow_symlinks=False):
                    os.unlink(e.name)
            if not names:
                break
            os.chdir("..")
            os.rmdir(names.pop())
    finally:
        os.chdir(cwd)
    os.rmdir(root)


def _serve_deep(bundle, tmp_path: Path, depth: int, name: str = "d") -> Path:
    """serve over a picture at the top and one `depth` folders down; the tree is removed either way."""
    root = make_deep(tmp_path / "in", depth, name)
    save_picture(root / "top.png")
    out = tmp_path / "p.csv"
    try:
        assert serve(bundle, root, "--out", out, "--workers", 0, "--no-progress") == 0
    finally:
        remove_deep(root)
    return out


def test_m6_a_1200_level_tree_is_walked_without_recursion(bundle, tmp_path):
    rows = read_rows(_serve_deep(bundle, tmp_path, 1200))
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert rows[0]["path"].count("/") == 1200


def test_m6_a_folder_past_the_path_limit_is_a_warning_not_a_traceback(bundle, tmp_path, capsys):
    out = _serve_deep(bundle, tmp_path, 1500, name="dd")  # 4,500+ characters: past PATH_MAX
    err = capsys.readouterr().err
    assert "warning: cannot list" in err and "Traceback" not in err
    rows = read_rows(out)
    assert any(r["path"] == "top.png" and r["status"] == "ok" for r in rows)
