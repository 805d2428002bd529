"""The input feeds train/bench.py times: data on the device (model-only ceiling), our CPU-decode DataLoader,
our GPU-decode pipeline and the tutorials' PIL loop; and the image folder they read (given or synthetic)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core.demo_data import make_image
from core.errors import UserError
from core.fsio import atomic_dir
from core.images import BadImage, decode_image, is_image_file
from core.jpeg import DecodeStats
from core.preprocess import AugmentSpec, EvalSpec, train_transform
from train.bench_step import Batches, Setup
from train.data import make_loader
from train.gpu_data import EncodedImages, GpuPipeline, collate_encoded, prefetch

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
    pin = setup.device.type == "cuda"
    loader = make_loader(ds, batch, workers, collate_decoded, RandomSampler(ds), pin, drop_last=True)

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
    ds = EncodedImages(samples, threads=threads)
    loader = make_loader(ds, batch, workers, collate_encoded, RandomSampler(ds), drop_last=True)
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
