"""The parts of tools/gpu_check.py that run inside one Python process (decode parity, bundle reload).

    python tools/gpu_check_parts.py decode --work DIR --images 256 --side 500   # → DIR/decode.json
    python tools/gpu_check_parts.py reload --work DIR                           # DIR/runs/check/best

Each prints its figures as one JSON line; a failed check exits 1 with one line saying what failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class CheckFailed(Exception):
    pass


def decode_parity(work: Path, n_images: int, side: int) -> dict:
    """nvJPEG (or, in the smoke run, torchvision's CPU decoder) vs PIL on the same files, 4:2:0 and 4:4:4."""
    import io

    import numpy as np
    import torch

    from core.demo_data import make_image
    from core.images import decode_image

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    images = [make_image(k % 4, rng, (side, side * 3 // 4)) for k in range(n_images)]
    figures: dict = {"device": str(device), "images": len(images)}
    for name, subsampling in (("420", 2), ("444", 0)):
        datas = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90, subsampling=subsampling)
            datas.append(buf.getvalue())
        decoded, seconds, fallbacks = _device_decode(datas, device)
        diffs = [
            np.abs(np.asarray(decode_image(d), np.int16) - t.permute(1, 2, 0).cpu().numpy().astype(np.int16))
            for d, t in zip(datas, decoded)
        ]
        allv = np.concatenate([d.ravel() for d in diffs])
        figures[name] = {
            "mean_abs_diff": round(float(allv.mean()), 3),
            "p99_abs_diff": float(np.percentile(allv, 99)),
            "max_abs_diff": int(allv.max()),
            "images_per_s": round(len(datas) / seconds, 1),
        }
        figures["fallbacks"] = figures.get("fallbacks", 0) + fallbacks
    (work / "decode.json").write_text(json.dumps(figures, indent=2))
    return figures


def _device_decode(datas: list[bytes], device) -> tuple[list, float, int]:
    """Decode with core.jpeg (the router and device decoder train and serve use); time the second of two
    passes (the first warms nvJPEG up). Fallbacks = files the router or the device decoder refused."""
    import torch

    from core import jpeg

    blobs = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    refused = sum(not jpeg.route_jpeg(b).device for b in blobs)

    def once() -> list:
        out = jpeg.decode_on_device(blobs, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    once()
    t0 = time.perf_counter()
    out = once()
    seconds = time.perf_counter() - t0
    if any(img is None for img in out):
        raise CheckFailed(f"the device decoder refused {sum(img is None for img in out)} baseline JPEGs")
    return out, seconds, refused


def reload_bundle(work: Path) -> dict:
    import torch

    from core.bundle import load_bundle

    model, record = load_bundle(work / "runs" / "check" / "best")
    crop = record.preprocess.crop
    with torch.no_grad():
        logits = model.eval()(torch.zeros(2, 3, crop, crop))
    if tuple(logits.shape) != (2, len(record.classes)):
        raise CheckFailed(
            f"reloaded bundle gives logits {tuple(logits.shape)}, expected (2, {len(record.classes)})"
        )
    return {"arch": record.arch, "classes": len(record.classes), "crop": crop}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("decode", "reload"))
    ap.add_argument("--work", required=True, type=Path, help="gpu_check's work folder")
    ap.add_argument("--images", type=int, default=8, help="decode: how many JPEGs")
    ap.add_argument("--side", type=int, default=64, help="decode: their width in pixels")
    args = ap.parse_args(argv)
    try:
        figures = (
            decode_parity(args.work, args.images, args.side)
            if args.part == "decode"
            else reload_bundle(args.work)
        )
    except CheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
