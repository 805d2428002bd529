"""Test helpers for serve: tiny images, a model.onnx built here (export/ is another stage), CLI runners."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.bundle import load_bundle
from core.demo_data import make_image
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
