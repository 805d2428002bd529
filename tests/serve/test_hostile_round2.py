"""Hostile input, round 2 (issue 19), serve side: bounded memory before the work, numbers that cannot lie,
spreadsheet-safe cells, and a Ctrl-C that never hangs. Each test is named for its item (M1 ... M25)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from core.bundle import RECORD_FILE
from core.model_record import ONNX_RECORD_KEY
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


# ─── M4: model record values validated when read, serve and export alike ──────────────────────


BAD_RECORDS = {
    "not-an-object": lambda d: [d],
    "negative-crop": lambda d: {**d, "preprocess": {**d["preprocess"], "crop": -5}},
    "crop-60000": lambda d: {**d, "preprocess": {**d["preprocess"], "crop": 60000}},
    "unknown-interpolation": lambda d: {**d, "preprocess": {**d["preprocess"], "interpolation": "lanczos9"}},
    "duplicate-classes": lambda d: {**d, "classes": ["1", "1", "3", "4"]},
}
BAD_REASONS = {
    "not-an-object": "not a JSON object",
    "negative-crop": "preprocess.crop",
    "crop-60000": "preprocess.crop",
    "unknown-interpolation": "preprocess.interpolation",
    "duplicate-classes": "twice",
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_m4_a_bad_record_is_one_line_exit_2_in_serve(bundle, tmp_path, capsys, case):
    path = bundle / RECORD_FILE
    path.write_text(json.dumps(BAD_RECORDS[case](json.loads(path.read_text()))))
    save_picture(tmp_path / "in" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(bundle, tmp_path / "in", "--out", tmp_path / "p.csv", "--workers", 0, "--no-progress")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and BAD_REASONS[case] in err[0], err
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("case", ["crop-60000", "duplicate-classes", "not-an-object"])
def test_m4_a_bad_record_is_one_line_exit_2_in_export(bundle, tmp_path, capsys, case):
    from tests.export.export_helpers import run_export

    path = bundle / RECORD_FILE
    path.write_text(json.dumps(BAD_RECORDS[case](json.loads(path.read_text()))))
    capsys.readouterr()
    assert run_export(bundle, "--out", tmp_path / "dist", "--no-bench") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and BAD_REASONS[case] in err[0], err
    assert not (tmp_path / "dist" / "model.onnx").exists()


def test_m4_an_onnx_record_is_validated_too(bundle, tmp_path):
    from core.errors import UserError
    from core.model_record import read_onnx_record
    from tests.serve.helpers import export_onnx

    onnx_path = export_onnx(bundle, tmp_path / "m.onnx")
    import onnx

    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        if prop.key == ONNX_RECORD_KEY:
            prop.value = json.dumps(BAD_RECORDS["crop-60000"](json.loads(prop.value)))
    onnx.save(proto, str(onnx_path))
    with pytest.raises(UserError, match="preprocess.crop"):
        read_onnx_record(onnx_path)


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


def test_m6_a_1200_level_tree_is_walked_without_recursion(bundle, tmp_path):
    root = make_deep(tmp_path / "in", 1200)
    save_picture(root / "top.png")
    out = tmp_path / "p.csv"
    try:
        assert serve(bundle, root, "--out", out, "--workers", 0, "--no-progress") == 0
    finally:
        remove_deep(root)
    rows = read_rows(out)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert rows[0]["path"].count("/") == 1200


def test_m6_a_folder_past_the_path_limit_is_a_warning_not_a_traceback(bundle, tmp_path, capsys):
    root = make_deep(tmp_path / "in", 1500, name="dd")  # 4,500+ characters: past PATH_MAX
    save_picture(root / "top.png")
    out = tmp_path / "p.csv"
    try:
        assert serve(bundle, root, "--out", out, "--workers", 0, "--no-progress") == 0
    finally:
        remove_deep(root)
    err = capsys.readouterr().err
    assert "warning: cannot list" in err and "Traceback" not in err
    rows = read_rows(out)
    assert any(r["path"] == "top.png" and r["status"] == "ok" for r in rows)


# ─── M8, M9: graphs that produce NaN, or the wrong number of rows ─────────────────────────────


def _graph(path: Path, record: dict, kind: str) -> Path:
    """uint8 images → [N, 4] logits: `nan` = 0/0 in every cell; `one_row` = [1, 4] for any batch."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),  # [N, 3]
        helper.make_node("Concat", ["m", "m"], ["m6"], axis=1),
        helper.make_node("Slice", ["m6", "starts", "ends", "axes"], ["m4"]),  # [N, 4]
    ]
    if kind == "nan":
        nodes += [
            helper.make_node("Sub", ["m4", "m4"], ["zero"]),
            helper.make_node("Div", ["zero", "zero"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("ReduceMean", ["m4"], ["logits"], axes=[0], keepdims=1))
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", TensorProto.INT64, [1], [4]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_RECORD_KEY, json.dumps(record)
    onnx.save(model, str(path))
    return path


def test_m8_nan_output_is_an_error_row_never_ok(bundle, tmp_path, capsys):
    record = json.loads((bundle / RECORD_FILE).read_text())
    for i in range(3):
        save_picture(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "p.csv"
    model = _graph(tmp_path / "nan.onnx", record, "nan")
    assert serve(model, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress") == 0
    rows = read_rows(out)
    assert len(rows) == 3 and all(r["status"] == "error" and "NaN/Inf" in r["error"] for r in rows)
    assert "0 ok, 3 errors" in capsys.readouterr().out


def test_m9_a_graph_with_one_row_per_batch_is_refused_at_start(bundle, tmp_path, capsys):
    record = json.loads((bundle / RECORD_FILE).read_text())
    save_picture(tmp_path / "in" / "a.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        serve(_graph(tmp_path / "one.onnx", record, "one_row"), tmp_path / "in", "--out", tmp_path / "p.csv")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "returns 1 rows of logits for a batch of 3" in err[0]
    assert not (tmp_path / "p.csv").exists()


# ─── M10: spreadsheet-safe name cells ─────────────────────────────────────────────────────────

FORMULAS = ["=1+1", "+cmd", "-2", "@SUM(A1)"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_m10_formula_cells_get_a_quote_in_csv_only(make_bundle, tmp_path, fmt):
    b = make_bundle(
        "cifar_cnn", crop=32, classes=FORMULAS, display_names=['=HYPERLINK("x")', "\tt", "\rr", "@n"]
    )
    save_picture(tmp_path / "in" / "=evil.png")
    out = tmp_path / f"p.{fmt}"
    assert serve(b, tmp_path / "in", "--out", out, "--workers", 0, "--no-progress", "--topk", 4) == 0
    if fmt == "jsonl":
        row = json.loads(out.read_text().splitlines()[0])
        assert row["label"] in FORMULAS and set(row["top4_labels"]) == set(FORMULAS)
        return
    (row,) = read_rows(out)
    assert row["label"].startswith("'") and row["label"][1:] in FORMULAS
    assert row["display_name"].startswith("'")
    assert sorted(c[1:] for c in row["top4_labels"].split("|")) == sorted(FORMULAS)
    assert row["path"] == "=evil.png"  # the resume key keeps its own (reversible) escaping
    assert (
        serve(b, tmp_path / "in", "--out", out, "--resume", "--workers", 0, "--no-progress", "--topk", 4) == 0
    )
    assert len(read_rows(out)) == 1  # resume still recognises the row


# ─── M25: Ctrl-C, repeated, to the whole process group ────────────────────────────────────────


def _rows(path: Path) -> int:
    return max(0, path.read_text().count("\n") - 1) if path.exists() else 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups")
@pytest.mark.parametrize("attempt", [0, 1, pytest.param(2, marks=pytest.mark.slow)])
def test_m25_repeated_ctrl_c_never_hangs_or_prints_a_traceback(bundle, tmp_path, attempt):
    images = tmp_path / "many"
    for i in range(60):
        save_picture(images / f"{i:03d}.png", seed=i, size=(40, 32))
    out = tmp_path / "p.csv"
    args = [
        bundle,
        images,
        "--out",
        out,
        "--batch-size",
        2,
        "--workers",
        2,
        "--no-progress",
        "--throttle",
        0.05,
    ]
    proc = subprocess.Popen(
        [sys.executable, str(SERVE), *map(str, args)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # a background run (SIGINT ignored) would pass SIG_IGN on: restore the default, as a terminal has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while _rows(out) < 2 + attempt * 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    for _ in range(6):  # an impatient user: Ctrl-C again and again, into the cleanup
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.03 * (attempt + 1))
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("serve still running 90 s after repeated Ctrl-C")
    err = proc.stderr.read().decode().strip().splitlines()
    assert proc.returncode == 130, err
    assert len(err) == 1 and err[0].startswith("interrupted"), err
