"""Training images/s per model: model-only ceiling, our CPU- and GPU-decode paths, the tutorials' loop, ratios.

All rows come from one run on one machine. Runs on CPU at tiny sizes too (CI smoke test).

    python train/bench.py --models resnet50 --batch-size 256 --amp --channels-last --compile
    python train/bench.py --models densenet161 --freeze-backbone --amp --channels-last --data /data/flowers/train
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python train/bench.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.demo_data import make_image
from core.errors import UserError, cli_entry
from core.fsio import atomic_dir, write_json_atomic
from core.images import BadImage, decode_image, is_image_file
from core.jpeg import DecodeStats
from core.models import HeadSpec, backbone_frozen_eval, build_model, set_backbone_trainable
from core.preprocess import AugmentSpec, EvalSpec, Normalize, default_spec_for, train_transform
from train.gpu_data import EncodedImages, GpuPipeline, collate_encoded, prefetch

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
PATHS = ("model", "cpu", "gpu", "tutorial")
LABELS = {
    "model": "model only (data on device)",
    "cpu": "ours, CPU decode (DataLoader)",
    "gpu": "ours, GPU decode",
    "tutorial": "tutorial loop (PIL, fp32)",
}


# ------------------------------------------------------------------------------ data


def synthetic_folder(dst: Path, count: int, size: int, classes: int = 4, seed: int = 0) -> Path:
    """`count` JPEGs of about size×size (±25%, so a batch mixes sizes) in dst/<class>/, made once."""
    if dst.is_dir() and sum(1 for _ in dst.rglob("*.jpg")) >= count:
        return dst
    rng = np.random.default_rng(seed)
    with atomic_dir(dst) as tmp:
        for k in range(count):
            w, h = (int(size * rng.uniform(0.75, 1.25)) for _ in range(2))
            folder = Path(tmp) / str(k % classes)
            folder.mkdir(exist_ok=True)
            make_image(k % classes, rng, (w, h)).save(folder / f"{k:06d}.jpg", quality=90)
    return dst


def list_samples(root: Path) -> list[tuple[str, int]]:
    """root/<class>/<image>, or root/train/<class>/<image>."""
    if (root / "train").is_dir():
        root = root / "train"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    samples = [
        (str(f), k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir()) if is_image_file(f)
    ]
    if not samples:
        raise UserError(
            f"no images under {root}/<class>/; pass --data with class folders or leave it out "
            "for a synthetic folder"
        )
    return samples


class DecodedImages(Dataset):
    """Our CPU path: core decoder + core train transform → uint8 [3, crop, crop] (bad files: skipped)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int]:
        path, label = self.samples[i]
        try:
            return self.transform(decode_image(path)), label
        except BadImage:
            return None, label


def collate_decoded(items: list[tuple[torch.Tensor | None, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    kept = [(x, y) for x, y in items if x is not None]
    return torch.stack([x for x, _ in kept]), torch.tensor([y for _, y in kept])


def forever(make: Callable[[int], Batches]) -> Batches:
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


# ------------------------------------------------------------------------------ training step


@dataclass
class Setup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def amp_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def build(
    arch: str, num_classes: int, freeze: bool, setup: Setup, compile_model: bool, channels_last: bool
) -> tuple[nn.Module, nn.Module]:
    """(module to call, underlying model). Frozen backbone: its parameters do not require grad, so no
    autograd graph is recorded through it and its BatchNorm layers stay in eval mode."""
    model = build_model(arch, num_classes, HeadSpec(), pretrained="none").to(setup.device).train()
    if freeze:
        set_backbone_trainable(model, False)
        backbone_frozen_eval(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return (torch.compile(model) if compile_model else model), model


def make_step(
    model: nn.Module, params: list[nn.Parameter], setup: Setup, sync_loss: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimizer step on normalized float images. The loss is summed on the device (no host sync)
    unless `sync_loss` (the tutorial's per-step `loss.item()`)."""
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    fp16 = setup.amp_dtype == torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)
    total = torch.zeros((), device=setup.device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        nonlocal total
        with torch.autocast(
            setup.device.type, dtype=setup.amp_dtype or torch.float32, enabled=setup.amp_dtype is not None
        ):
            loss = crit(model(images), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        total = total + loss.detach().float()
        if sync_loss:
            loss.item()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    model: str
    path: str
    batch_size: int
    images_per_s: float
    data_wait: float  # fraction of the timed wall time spent waiting for the next batch


def measure(
    batches: Batches, step: Callable, warmup: int, steps: int, device: torch.device
) -> tuple[float, float]:
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start, waited, seen = time.perf_counter(), 0.0, 0
    for _ in range(steps):
        t = time.perf_counter()
        images, labels = next(batches)
        waited += time.perf_counter() - t
        step(images, labels)
        seen += len(labels)
    sync(device)
    elapsed = time.perf_counter() - start
    return seen / elapsed, waited / elapsed


# ------------------------------------------------------------------------------ the four paths


def model_only_batches(
    batch: int, crop: int, num_classes: int, setup: Setup, normalize: nn.Module
) -> Batches:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8, generator=g).to(setup.device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(setup.device)
    while True:  # normalization stays in the measured step, as in the real loop
        x = normalize(images)
        yield (x.contiguous(memory_format=torch.channels_last) if setup.channels_last else x), labels


def cpu_batches(
    samples, aug: AugmentSpec, spec: EvalSpec, batch: int, workers: int, setup: Setup, normalize: nn.Module
) -> Batches:
    ds = DecodedImages(samples, train_transform(aug, spec))
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        collate_fn=collate_decoded,
        pin_memory=setup.device.type == "cuda",
        persistent_workers=workers > 0,
    )

    def epoch(_: int) -> Batches:
        for images, labels in loader:
            x = normalize(images.to(setup.device, non_blocking=True))
            x = x.contiguous(memory_format=torch.channels_last) if setup.channels_last else x
            yield x, labels.to(setup.device, non_blocking=True)

    return forever(epoch)


def gpu_batches(
    samples,
    aug: AugmentSpec,
    spec: EvalSpec,
    batch: int,
    workers: int,
    threads: int,
    setup: Setup,
    stats: list[DecodeStats],
) -> Batches:
    loader = DataLoader(
        EncodedImages(samples, threads=threads),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        collate_fn=collate_encoded,
        persistent_workers=workers > 0,
    )
    pipe = GpuPipeline(spec, setup.device, aug, seed=0, channels_last=setup.channels_last)
    stats.append(pipe.stats)  # the caller prints how many images went to the CPU decoder instead
    # ONE prefetch over every epoch of the synthetic set: steady state only. A prefetch per epoch drained
    # and refilled the decode/augment stages at every epoch end (every 8 of the GPU check's 38 steps).
    return ((b.images, b.labels) for b in prefetch(endless(loader), pipe))


def endless(loader: DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch, each batch tagged with its epoch (its augmentation key)."""
    epoch = 0
    while True:
        for b in loader:
            b.epochs.fill_(epoch)
            yield b
        epoch += 1


def tutorial_batches(
    samples, crop: int, resize: int, batch: int, workers: int, device: torch.device
) -> Batches:
    """The Flowers tutorial's input pipeline: PIL → RandomRotation(30) → RandomResizedCrop → flip → ToTensor
    → Normalize on the CPU, float32 batches copied to the device."""
    from PIL import Image
    from torchvision import transforms as T1

    tf = T1.Compose(
        [
            T1.RandomRotation(30),
            T1.RandomResizedCrop(crop),
            T1.RandomHorizontalFlip(),
            T1.ToTensor(),
            T1.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    class Tutorial(Dataset):
        def __len__(self) -> int:
            return len(samples)

        def __getitem__(self, i: int):
            path, label = samples[i]
            return tf(Image.open(path).convert("RGB")), label

    loader = DataLoader(
        Tutorial(),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )

    def epoch(_: int) -> Batches:
        for images, labels in loader:
            yield images.to(device), labels.to(device)

    return forever(epoch)


# ------------------------------------------------------------------------------ batch size


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def largest_batch_that_fits(try_batch: Callable[[int], None], start: int, minimum: int = 1) -> int:
    """Largest batch size, halving from `start`, for which `try_batch(n)` runs without running out of memory.

    `try_batch` should run two full training steps (the second allocates optimizer state). This is the
    search `train.batch_size: auto` can call with the real model and step.
    """
    n = start
    while n >= minimum:
        try:
            try_batch(n)
            return n
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n //= 2
    raise UserError(f"even a batch of {minimum} does not fit in device memory; use a smaller model or crop")


# ------------------------------------------------------------------------------ driver


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
