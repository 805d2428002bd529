"""Training images/s per model: model-only ceiling, our CPU- and GPU-decode paths, the tutorials' loop, ratios.

All rows come from one run on one machine. Runs on CPU at tiny sizes too (CI smoke test).

    python train/bench.py --models resnet50 --batch-size 256 --amp --channels-last --compile
    python train/bench.py --models densenet161 --freeze-backbone --amp --channels-last --data /data/flowers/train
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from core.errors import UserError, cli_entry
from core.fsio import write_json_atomic
from core.jpeg import DecodeStats
from core.preprocess import AugmentSpec, EvalSpec, Normalize, default_spec_for
from train.bench_feeds import (
    cpu_batches,
    gpu_batches,
    list_samples,
    model_only_batches,
    synthetic_folder,
    tutorial_batches,
)
from train.bench_step import (
    Row,
    Setup,
    amp_dtype_for,
    build,
    largest_batch_that_fits,
    make_step,
    measure,
    sync,
)

PATHS = ("model", "cpu", "gpu", "tutorial")
LABELS = {
    "model": "model only (data on device)",
    "cpu": "ours, CPU decode (DataLoader)",
    "gpu": "ours, GPU decode",
    "tutorial": "tutorial loop (PIL, fp32)",
}


def bench_model(arch: str, args: argparse.Namespace, samples, setup: Setup) -> tuple[list[Row], dict]:
    """The rows of one model, and where the GPU feed decoded its images (device vs CPU, with reasons)."""
    spec = default_spec_for(args.size)
    aug = AugmentSpec(rotation=args.rotation)
    num_classes = max(y for _, y in samples) + 1
    normalize = Normalize(spec.mean, spec.std).to(setup.device)
    module, model = build(arch, num_classes, args.freeze_backbone, setup, args.compile, setup.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    step = make_step(module, params, setup)
    batch = args.batch_size
    if args.find_batch_size:

        def try_batch(n: int) -> None:
            for _ in range(2):
                step(*next(model_only_batches(n, spec.crop, num_classes, setup, normalize)))
            sync(setup.device)

        batch = largest_batch_that_fits(try_batch, args.batch_size)
        print(f"{arch}: largest batch that fits: {batch}", flush=True)
    if len(samples) < batch:
        raise UserError(
            f"{len(samples)} images is fewer than one batch of {batch}; add images or lower --batch-size"
        )
    makers = {
        "model": lambda: model_only_batches(batch, spec.crop, num_classes, setup, normalize),
        "cpu": lambda: cpu_batches(samples, aug, spec, batch, args.workers, setup, normalize),
        "gpu": lambda: gpu_batches(
            samples, aug, spec, batch, args.workers, args.threads, setup, decode_stats
        ),
    }
    decode_stats: list[DecodeStats] = []
    rows = []
    for path in [p for p in args.paths if p in makers]:
        ips, wait = measure(makers[path](), step, args.warmup, args.steps, setup.device)
        rows.append(Row(arch, path, batch, ips, wait))
        print(f"  {arch:<14} {LABELS[path]:<32} {ips:10.1f} img/s  data wait {wait:5.1%}", flush=True)
        if path == "gpu" and decode_stats:
            print(f"  {arch:<14} GPU feed {decode_stats[-1].summary()}", flush=True)
    if "tutorial" in args.paths:
        rows.append(bench_tutorial(arch, args, samples, spec, num_classes, setup))
    decode = {"device": decode_stats[-1].device, "cpu": dict(decode_stats[-1].cpu)} if decode_stats else {}
    return rows, decode


def bench_tutorial(arch: str, args, samples, spec: EvalSpec, num_classes: int, setup: Setup) -> Row:
    """Eager fp32, contiguous, per-step loss.item(): the tutorial's loop, same model and freezing."""
    plain = Setup(setup.device, None, False)
    module, model = build(arch, num_classes, args.freeze_backbone, plain, False, False)
    step = make_step(module, [p for p in model.parameters() if p.requires_grad], plain, sync_loss=True)
    batch = args.tutorial_batch_size
    if len(samples) < batch:
        raise UserError(
            f"{len(samples)} images is fewer than one tutorial batch of {batch}; lower --tutorial-batch-size"
        )
    batches = tutorial_batches(samples, spec.crop, spec.resize, batch, args.tutorial_workers, setup.device)
    ips, wait = measure(batches, step, args.warmup, args.steps, setup.device)
    print(f"  {arch:<14} {LABELS['tutorial']:<32} {ips:10.1f} img/s  data wait {wait:5.1%}", flush=True)
    return Row(arch, "tutorial", batch, ips, wait)


def ratios(rows: list[Row]) -> dict[str, float]:
    ips = {r.path: r.images_per_s for r in rows}
    pairs = {
        "gpu/model": ("gpu", "model"),
        "cpu/model": ("cpu", "model"),
        "gpu/tutorial": ("gpu", "tutorial"),
        "cpu/tutorial": ("cpu", "tutorial"),
    }
    return {name: ips[a] / ips[b] for name, (a, b) in pairs.items() if a in ips and b in ips and ips[b] > 0}


def describe(args: argparse.Namespace, setup: Setup) -> str:
    amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[setup.amp_dtype]
    parts = [
        setup.device.type if setup.device.type != "cuda" else torch.cuda.get_device_name(setup.device),
        "frozen backbone" if args.freeze_backbone else "full fine-tune",
        amp,
        "channels_last" if setup.channels_last else "contiguous",
        "compiled" if args.compile else "eager",
        f"{args.size} px",
        f"rotation {args.rotation:g}°",
    ]
    return ", ".join(parts)


# --smoke: every row at CPU size, well under a minute on 2 cores (what CI and gpu_check --smoke run)
SMOKE = {
    "models": "resnet18",
    "size": 32,
    "steps": 2,
    "warmup": 1,
    "batch_size": 4,
    "tutorial_batch_size": 4,
    "workers": 0,
    "tutorial_workers": 0,
    "threads": 2,
    "synthetic": 8,
    "image_size": 48,
    "device": "cpu",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="train/bench.py", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", help="image folder (<class>/<image> or train/<class>/<image>); default: synthetic JPEGs"
    )
    ap.add_argument(
        "--synthetic", type=int, default=512, help="number of synthetic JPEGs when --data is not given"
    )
    ap.add_argument("--image-size", type=int, default=500, help="synthetic JPEG side (±25%%)")
    ap.add_argument("--cache", default="runs/bench-data", help="where synthetic JPEGs are written (reused)")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny CPU sizes for checking the script (resnet18, 32 px, 8 images, 2 steps); flags still override",
    )
    ap.add_argument(
        "--models",
        "--arch",
        dest="models",
        default="resnet50",
        help="comma-separated archs, e.g. resnet50,densenet161",
    )
    ap.add_argument("--size", type=int, default=224, help="training crop size")
    ap.add_argument(
        "--rotation", type=float, default=30.0, help="our paths' RandomRotation degrees (tutorial: 30)"
    )
    ap.add_argument(
        "--batch-size",
        "--batch",
        dest="batch_size",
        type=int,
        default=64,
        help="our batch size (start of the search with --find-batch-size)",
    )
    ap.add_argument(
        "--find-batch-size", action="store_true", help="halve from --batch-size until a step fits"
    )
    ap.add_argument("--steps", type=int, default=30, help="timed steps per path")
    ap.add_argument(
        "--warmup", type=int, default=5, help="untimed steps first (worker start-up, compile, cudnn)"
    )
    ap.add_argument("--workers", type=int, default=8, help="DataLoader worker processes for our paths")
    ap.add_argument("--threads", type=int, default=8, help="file-reading threads per worker (GPU path)")
    ap.add_argument(
        "--amp", action="store_true", help="bf16 autocast (fp16 + scaler where bf16 is unsupported)"
    )
    ap.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (our paths)")
    ap.add_argument("--freeze-backbone", action="store_true", help="train the head only (the Flowers recipe)")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"which rows to run, from {','.join(PATHS)}")
    ap.add_argument("--tutorial-batch-size", type=int, default=64, help="the Flowers tutorial's batch size")
    ap.add_argument(
        "--tutorial-workers", type=int, default=4, help="the Flowers tutorial's DataLoader workers"
    )
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    ap.add_argument("--out", "--json", dest="out", help="also write the rows and ratios to this JSON file")
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        ap.set_defaults(**SMOKE)
    args = ap.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise UserError(f"unknown --paths {', '.join(unknown)}; valid: {', '.join(PATHS)}")
    if min(args.steps, args.batch_size, args.size) < 1 or args.warmup < 0:
        raise UserError("--steps, --batch-size and --size must be >= 1 and --warmup >= 0")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    setup = Setup(device, amp_dtype_for(device, args.amp), args.channels_last and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.data:
        samples = list_samples(Path(args.data))
    else:
        root = Path(args.cache) / f"synthetic-{args.synthetic}x{args.image_size}"
        samples = list_samples(synthetic_folder(root, args.synthetic, args.image_size))
    print(f"{len(samples)} images; {describe(args, setup)}", flush=True)
    results = {"setting": describe(args, setup), "images": len(samples), "models": {}}
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows, decode = bench_model(arch, args, samples, setup)
        r = ratios(rows)
        print(f"  {arch:<14} ratios: " + "  ".join(f"{k} = {v:.2f}x" for k, v in r.items()), flush=True)
        results["models"][arch] = {"rows": [asdict(x) for x in rows], "ratios": r, "gpu_feed_decode": decode}
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
