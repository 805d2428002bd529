"""Throughput of each serving stage (discovery, decode, model, end to end) next to the tutorials' naive
predictor (PIL + torchvision transforms in a DataLoader, fp32), measured in one run on the same JPEGs.

    python -m serve.bench --smoke                                  # CPU, tiny, seconds: the code path only
    python -m serve.bench --n 64 --arch resnet18 --size 64         # CPU, well under a minute
    python -m serve.bench --n 4096 --side 500 --arch resnet50 --json serve_bench.json   # a GPU
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T1
from tqdm import tqdm

from core.bundle import BundleRecord, save_bundle
from core.demo_data import make_image
from core.errors import cli_entry
from core.jpeg import DecodeStats
from core.models import HeadSpec, build_model
from core.preprocess import EvalSpec, default_spec_for
from core.workers import plan_threads, usable_cpus
from serve.backends import default_batch_size, load_record, open_backend, resolve_device
from serve.decode import DecodePipeline
from serve.discover import iter_items
from serve.run import classify
from serve.writer import Layout, RowWriter

UNIQUE_IMAGES = 32  # synthetic JPEGs are crops of a few unique ones: generating noise is slower than encoding
DISTINCT_SIZES = 64 * 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve.bench", description=__doc__.splitlines()[0])
    p.add_argument("--folder", help="benchmark on these images instead of synthetic ones")
    p.add_argument("--n", "--images", dest="images", type=int, default=512, help="how many synthetic JPEGs")
    p.add_argument(
        "--side", "--image-size", dest="image_size", type=int, default=500, help="synthetic JPEG side (±10%%)"
    )
    p.add_argument("--model", help="bundle / model.onnx / model.engine to time (default: untrained --arch)")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="model crop for --arch (resize = size·256/224)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="CPU decoding processes (default: cores − 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument(
        "--threads", type=int, help="model threads (default: serve's, the CPUs left after the workers)"
    )
    p.add_argument(
        "--variants",
        nargs="+",
        metavar="ONNX",
        help="also time these ONNX files (model.onnx, model.fp16.onnx, model.int8.onnx) on the same "
        "images, with their top-1 agreement with --model",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="every stage on a tiny CPU run (24 JPEGs of 64 px, "
        "resnet18 at 32 px, batch 8, 1 worker), in seconds; overrides those flags",
    )
    args = p.parse_args(argv)
    if args.smoke:
        vars(args).update(SMOKE)
    return args


SMOKE = {
    "images": 24,
    "image_size": 64,
    "arch": "resnet18",
    "size": 32,
    "batch_size": 8,
    "workers": 1,
    "device": "cpu",
}


def synthetic_jpegs(root: Path, n: int, side: int) -> Path:
    """n JPEGs of n distinct sizes (up to 4,096; a mixed photo folder has one size per photo, and batches
    must pay for that): crops of a few unique pictures (making noise is slower than encoding), encoded
    in threads (PIL releases the GIL)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bases = [make_image(i, rng, (side, side)) for i in range(min(n, UNIQUE_IMAGES))]

    def write(i: int) -> None:
        dh, dw = divmod(i % DISTINCT_SIZES, 64)  # (side - dh, side - dw): a different size for each image
        img = bases[i % len(bases)].crop((0, 0, max(8, side - dw), max(8, side - dh)))
        folder = root / f"{i // 1000:04d}"
        folder.mkdir(exist_ok=True)
        img.save(folder / f"img_{i:07d}.jpg", quality=90)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(n)))
    return root


def untrained_bundle(root: Path, arch: str, size: int) -> Path:
    model = build_model(arch, 10, HeadSpec(), pretrained="none")
    record = BundleRecord(arch=arch, classes=[str(i) for i in range(10)], preprocess=default_spec_for(size))
    return save_bundle(root / "bundle", model, record)


def _rate(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9):>10,.0f}"


def time_discovery(folder: Path) -> tuple[int, float]:
    t = time.perf_counter()
    n = sum(1 for _ in iter_items([str(folder)]))
    return n, time.perf_counter() - t


def time_decode(pipe: DecodePipeline, folder: Path, bs: int) -> float:
    t = time.perf_counter()
    for batch in pipe.batches(iter_items([str(folder)]), bs):
        batch.images.sum().item()  # wait for the device
    return time.perf_counter() - t


def time_model(backend, spec: EvalSpec, n: int, bs: int) -> float:
    x = torch.randint(0, 256, (bs, 3, spec.crop, spec.crop), dtype=torch.uint8, device=backend.device)
    backend(x)  # warm-up: cuDNN autotune, lazy allocations
    t = time.perf_counter()
    for _ in range(max(1, n // bs)):
        backend(x)
    return (time.perf_counter() - t) * n / (max(1, n // bs) * bs)


def time_end_to_end(pipe: DecodePipeline, folder: Path, backend, record, bs: int, out: Path) -> float:
    layout = Layout(tuple(record.classes), tuple(record.display_names))
    with RowWriter(out, layout) as writer, tqdm(disable=True) as bar:
        t = time.perf_counter()
        classify(pipe, backend, layout, iter_items([str(folder)]), writer, bs, bar, 0.0)
        return time.perf_counter() - t


class _PILFolder(Dataset):
    """The tutorials' predict(): open with PIL, torchvision transforms to a normalized float tensor."""

    def __init__(self, paths: list[str], spec: EvalSpec):
        self.paths = paths
        self.tf = T1.Compose(
            [
                T1.Resize(spec.resize),
                T1.CenterCrop(spec.crop),
                T1.ToTensor(),
                T1.Normalize(spec.mean, spec.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tf(Image.open(self.paths[i]).convert("RGB"))


def time_naive(
    folder: Path, model_path: str, spec: EvalSpec, device: torch.device, workers: int, bs: int
) -> float:
    from core.bundle import load_bundle

    model = load_bundle(model_path, map_location=device)[0]  # plain fp32 module, no autocast
    paths = [it.source for it in iter_items([str(folder)])]
    loader = DataLoader(_PILFolder(paths, spec), batch_size=bs, num_workers=workers)
    t = time.perf_counter()
    with torch.no_grad():
        for x in loader:
            probs = torch.softmax(model(x.to(device)), dim=1)
            probs.topk(min(5, probs.shape[1])).indices.cpu()  # a model may have fewer than 5 classes
    return time.perf_counter() - t


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    # the plan serve uses for a GPU model (all but one core decode, the rest run the model), as bench always
    # did, also on a CPU: its figures stay comparable with earlier runs
    workers, threads = plan_threads(usable_cpus(), "cuda", 1, args.workers, args.threads)
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as tmp:
        tmp = Path(tmp)
        folder = (
            Path(args.folder) if args.folder else synthetic_jpegs(tmp / "jpegs", args.images, args.image_size)
        )
        model_path = args.model or str(untrained_bundle(tmp, args.arch, args.size))
        record = load_record(model_path)
        # the decode workers fork before the backend touches CUDA (a fork after CUDA init is unsafe)
        with DecodePipeline(record.preprocess, "cpu", workers) as pipe:
            backend = open_backend(model_path, device, threads=threads)
            bs = args.batch_size or default_batch_size(backend.device)
            naive = args.model is None or Path(model_path).is_dir()  # the baseline needs torch weights
            figures = run_stages(
                pipe, backend, record, folder, model_path, workers, bs, naive, args.variants, tmp
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def run_stages(
    pipe: DecodePipeline,
    backend,
    record,
    folder: Path,
    model_path: str,
    workers: int,
    bs: int,
    naive: bool,
    variants: list[str] | None,
    tmp: Path,
) -> dict:
    spec, device = record.preprocess, backend.device
    n, t_disc = time_discovery(folder)
    print(
        f"{n} images in {folder}; model {backend.description}; batch {bs}; {workers} decode workers; "
        f"{torch.get_num_threads()} model threads; crop {spec.crop}",
        flush=True,
    )
    print(f"{'stage':<58}{'images/s':>10}")
    rates: dict[str, float] = {}

    def row(key: str, label: str, seconds: float) -> None:
        rates[key] = n / max(seconds, 1e-9)
        print(f"{label:<58}{_rate(n, seconds)}", flush=True)

    row("discovery", "discovery (os.scandir walk)", t_disc)
    row(
        "decode_cpu",
        "decode, CPU path (PIL + eval transform in processes)",
        time_decode(pipe.to("cpu"), folder, bs),
    )
    if device.type == "cuda":
        row(
            "decode_gpu",
            "decode, GPU path (nvJPEG batched + resize/crop)",
            time_decode(pipe.to(device), folder, bs),
        )
    row("model", "model only (uint8 in, logits out)", time_model(backend, spec, n, bs))
    pipe.to(device).stats = DecodeStats()  # the end line counts the end-to-end pass only
    row(
        "end_to_end",
        "end to end (serve: read, decode, model, CSV)",
        time_end_to_end(pipe, folder, backend, record, bs, tmp / "preds.csv"),
    )
    figures = {
        "images": n,
        "model": backend.description,
        "device": str(device),
        "batch_size": bs,
        "decode_workers": workers,
        "crop": spec.crop,
        "images_per_s": rates,
        "decode": pipe.report() or "CPU decoding",
    }
    if naive:
        row(
            "naive",
            "naive baseline (PIL + transforms in DataLoader, fp32)",
            time_naive(folder, model_path, spec, device, workers, bs),
        )
        figures["end_to_end_vs_naive"] = rates["end_to_end"] / rates["naive"]
        print(f"end to end vs naive: {figures['end_to_end_vs_naive']:.2f}x")
    if pipe.report():
        print(pipe.report())
    if variants:
        figures["variants"] = time_variants(variants, pipe, backend, record, folder, bs, tmp)
    return figures


def time_variants(
    paths: list[str], pipe: DecodePipeline, backend, record, folder: Path, bs: int, tmp: Path
) -> list[dict]:
    """Each ONNX variant on the same images: model-only and end-to-end images/s, and how often its top-1
    agrees with the main model's (tmp/preds.csv, written by the end-to-end row)."""
    n = sum(1 for _ in iter_items([str(folder)]))
    reference = _labels(tmp / "preds.csv")
    print(f"{'variant':<40}{'model img/s':>12}{'end to end':>12}{'top-1 agreement':>17}")
    rows = []
    for path in paths:
        variant = open_backend(path, backend.device, threads=torch.get_num_threads())
        out = tmp / f"variant_{len(rows)}.csv"
        t_model = time_model(variant, record.preprocess, n, bs)
        t_e2e = time_end_to_end(pipe.to(variant.device), folder, variant, record, bs, out)
        labels = _labels(out)
        agree = sum(labels[k] == v for k, v in reference.items()) / max(1, len(reference))
        rows.append(
            {
                "path": path,
                "precision": getattr(variant, "precision", "?"),
                "model_images_per_s": n / max(t_model, 1e-9),
                "end_to_end_images_per_s": n / max(t_e2e, 1e-9),
                "top1_agreement": agree,
            }
        )
        name = f"{Path(path).name} ({rows[-1]['precision']})"
        print(f"{name:<40}{_rate(n, t_model):>12}{_rate(n, t_e2e):>12}{agree:>17.4f}", flush=True)
    return rows


def _labels(csv_path: Path) -> dict[str, str]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return {row["path"]: row["label"] for row in csv.DictReader(fh) if row["status"] == "ok"}


if __name__ == "__main__":
    sys.exit(main())
