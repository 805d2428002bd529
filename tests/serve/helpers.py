"""Test helpers for serve: tiny images, a model.onnx built here (export/ is another stage), hand-built ONNX
graphs, CLI runners, and a serve process to signal."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.bundle import load_bundle
from core.demo_data import make_image
from core.model_record import ONNX_RECORD_KEY
from core.preprocess import WithPreprocessing

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "serve" / "main.py"


def picture(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small structured RGB image (a coloured shape on noise): different seeds give different classes."""
    return make_image(seed % 4, np.random.default_rng(seed), size)


def save_picture(path: Path, seed: int = 0, size: tuple[int, int] = (48, 40), **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(seed, size).save(path, **save_kw)
    return path


def image_tree(root: Path, per_class: dict[str, int], ext: str = ".jpg") -> list[str]:
    """root/<class>/img_<i><ext>; returns the relative paths in sorted order."""
    rels = []
    for c, n in per_class.items():
        for i in range(n):
            save_picture(root / c / f"img_{i}{ext}", seed=zlib.crc32(f"{c}/{i}".encode()) % 1000)
            rels.append(f"{c}/img_{i}{ext}")
    return sorted(rels)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit side×side PNG in a few tens of KB (zeros compress ~1000:1), built without PIL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(1)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def export_onnx(bundle: Path, path: Path) -> Path:
    """What export/ writes, minimally: uint8 'images' (dynamic batch) → 'logits', record in metadata_props."""
    import onnx

    model, record = load_bundle(bundle)
    net = WithPreprocessing(model, record.preprocess).eval()
    x = torch.zeros(2, 3, record.preprocess.crop, record.preprocess.crop, dtype=torch.uint8)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "imgclf.bundle", json.dumps(record.to_dict())
    onnx.save(proto, str(path))
    return path


def serve(*argv) -> int:
    """serve/main.py in this process; a user error surfaces as SystemExit(2)."""
    from serve.main import main

    return main([str(a) for a in argv])


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_serve(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SERVE), *map(str, argv)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def same_predictions(a: list[dict[str, str]], b: list[dict[str, str]], tol: float = 1e-5) -> None:
    """Rows match path by path: text columns exactly, probabilities within `tol`."""
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for ra, rb in zip(a, b):
        for key in ra:
            if "prob" in key and ra[key]:
                va, vb = (np.array(r[key].split("|"), dtype=float) for r in (ra, rb))
                assert np.allclose(va, vb, atol=tol), (ra["path"], key, ra[key], rb[key])
            else:
                assert ra[key] == rb[key], (ra["path"], key, ra[key], rb[key])


# ─── a serve run in its own process group, for signal tests ────────────────────────────────────


def rows_written(path: Path) -> int:
    """Data rows in an output being written (the header not counted); 0 before the file exists."""
    return max(0, path.read_text().count("\n") - 1) if path.exists() else 0


def start_serve(bundle: Path, tmp_path: Path, out: Path) -> subprocess.Popen:
    """serve over 60 small PNGs (made once under tmp_path), slowed by --throttle, with 2 decode workers."""
    images = tmp_path / "many"
    if not images.exists():
        for i in range(60):
            save_picture(images / f"{i:03d}.png", seed=i, size=(40, 32))
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
    # a session of its own: the test can signal its whole process group, as a terminal's Ctrl-C does
    return subprocess.Popen(
        [sys.executable, str(SERVE), *map(str, args)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # a background run (SIGINT ignored) would pass SIG_IGN on: restore the default, as a terminal has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_rows(proc: subprocess.Popen, out: Path, n: int) -> None:
    """Poll until serve has written `n` rows; it must still be running then."""
    deadline = time.monotonic() + 120
    while rows_written(out) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and rows_written(out) >= n, proc.stderr.read().decode()[-2000:]


def exits_within(proc: subprocess.Popen, seconds: float, after: str) -> None:
    """Wait for serve to end; a hang kills its process group and fails the test with serve's stderr."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"serve still running {seconds} s after {after}: {proc.stderr.read().decode()[-2000:]}")


# ─── hand-built ONNX graphs that carry a model record ──────────────────────────────────────────


def means_onnx(path: Path, record: dict, width: int = 4, tail: list | None = None, **dims) -> Path:
    """uint8 'images' → channel means, twice ([N, 6]), sliced to `width` columns; `tail` nodes (made with
    onnx.helper) turn those columns ('cols') into 'logits', else they are the logits. `images`/`logits`
    override the declared dims (default [N, 3, 32, 32] and [N, 4]). The record goes in metadata_props."""
    import onnx
    from onnx import TensorProto, helper

    sliced = "cols" if tail else "logits"
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),  # [N, 3]
            helper.make_node("Concat", ["m", "m"], ["m6"], axis=1),
            helper.make_node("Slice", ["m6", "starts", "ends", "axes"], [sliced]),
            *(tail or []),
        ],
        path.stem,
        [helper.make_tensor_value_info("images", TensorProto.UINT8, dims.get("images", ["N", 3, 32, 32]))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims.get("logits", ["N", 4]))],
        [
            helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", TensorProto.INT64, [1], [width]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_RECORD_KEY, json.dumps(record)
    onnx.save(model, str(path))
    return path
