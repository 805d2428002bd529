"""Training data: image folders (or CIFAR-10) → datasets of uint8 tensors, deterministic samplers, loaders.

Augmentation randomness is a pure function of (seed, epoch, sample index): the sampler hands the
epoch to the dataset with every index, and the dataset seeds torch's RNG from the three numbers.
So an image gets the same crop whatever worker, process or batch it lands in, and a resumed run
sees exactly the pixels an uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from core.bundle import load_display_names
from core.config import Config
from core.errors import UserError
from core.images import IMAGE_EXTENSIONS, BadImage, decode_image, is_class_folder, is_image_file
from core.preprocess import eval_transform, train_transform
from core.record_checks import check_class_names
from core.tree import files_under
from train.decodable import check_split_decodes
from train.gpu_data import EncodedImages, collate_encoded

SPLIT_DIRS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
CAT_TO_NAME = "cat_to_name.json"
IGNORE_LABEL = -1  # eval placeholder for an unreadable image: keeps batch sizes, masked out of metrics
READ_THREADS = 8  # GPU path: file reads per worker in flight (I/O, so threads overlap well)


# ------------------------------------------------------------------------------------------ sources


class ImageSource:
    """Indexable raw images: `load(i)` → PIL RGB (raises BadImage), `label(i)`, `name(i)`."""

    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return self.labels[i]


class FolderSource(ImageSource):
    def __init__(self, samples: list[tuple[str, int]]):
        self.paths = [p for p, _ in samples]
        self.labels = [y for _, y in samples]

    def load(self, i: int) -> Image.Image:
        return decode_image(self.paths[i])

    def name(self, i: int) -> str:
        return self.paths[i]


class ArraySource(ImageSource):
    """In-memory HWC uint8 images (CIFAR-10's own format)."""

    def __init__(self, data: np.ndarray, labels: Sequence[int], prefix: str):
        self.data, self.labels, self.prefix = data, list(labels), prefix

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.data[i])

    def name(self, i: int) -> str:
        return f"{self.prefix}[{i}]"


# ------------------------------------------------------------------------------------------ datasets


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Items are (uint8 [3,H,W] or None, label, bad-file note). Train items are keyed by (epoch, index)."""

    def __init__(self, source: ImageSource, transform: Callable[[Image.Image], torch.Tensor], seed: int = 0):
        self.source, self.transform, self.seed = source, transform, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, int, str]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        label = self.source.label(index)
        try:
            image = self.source.load(index)
            # fork_rng: seeding must not disturb the caller's RNG stream (num_workers=0 runs in the main process).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, index))
                return self.transform(image), label, ""
        except BadImage as exc:  # undecodable, or (eval transform) too elongated to resize
            return None, label, f"{self.source.name(index)}\t{exc}"


class EpochSampler(Sampler):
    """Yields (epoch, index): a permutation fixed by (seed, epoch), the same on every process."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.order()])

    def __len__(self) -> int:
        return self.n


def collate_train(
    items: list[tuple[torch.Tensor | None, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Unreadable images keep their slot as a zero image labelled IGNORE_LABEL (masked out of the loss), so
    batch shapes stay static for torch.compile; their notes travel back with the batch. A batch with no
    readable image at all comes back empty."""
    if all(x is None for x, _, _ in items):
        return (
            torch.empty(0, dtype=torch.uint8),
            torch.empty(0, dtype=torch.long),
            [note for _, _, note in items],
        )
    return collate_eval(items)


def collate_eval(
    items: list[tuple[torch.Tensor | None, int, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Unreadable images become a zero image labelled IGNORE_LABEL: every batch keeps its size, so
    gather_for_metrics can still drop the padding of the last distributed batch exactly."""
    shape = next((x.shape for x, _, _ in items if x is not None), None)
    images, labels, bad = [], [], []
    for x, y, note in items:
        if x is None:
            bad.append(note)
        images.append(x if x is not None else None)
        labels.append(y if x is not None else IGNORE_LABEL)
    if shape is None:
        raise UserError(f"no image in a validation/test batch could be decoded: {'; '.join(bad)[:500]}")
    images = [x if x is not None else torch.zeros(shape, dtype=torch.uint8) for x in images]
    return torch.stack(images), torch.tensor(labels), bad


# ------------------------------------------------------------------------------------------ discovery


def find_split(root: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def list_classes(train_dir: Path) -> list[str]:
    """Class folder names sorted as strings (1, 10, 2, ...), exactly like torchvision's ImageFolder."""
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and is_class_folder(e.name))
    if not classes:
        raise UserError(f"no class folders in {train_dir}; expected {train_dir}/<class>/<images>")
    check_class_names(classes, str(train_dir))
    return classes


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted(
        e.name
        for e in os.scandir(split_dir)
        if e.is_dir() and not e.name.startswith(".") and e.name not in index
    )
    if extra:
        raise UserError(
            f"{split_dir} has class folders that train/ lacks: {', '.join(extra[:10])}; "
            "every class needs training images"
        )
    samples = []
    for c in classes:
        folder = split_dir / c
        if not folder.is_dir():
            continue  # a class may be absent from valid/test
        # Files in hidden subfolders (.ipynb_checkpoints, ...) are not data, as in train/split.py.
        files = [f for f in files_under(folder) if is_image_file(f)]  # iterative: any depth
        if not files:
            raise UserError(
                f"class folder {folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        samples.extend((f, index[c]) for f in files)
    return samples


# ------------------------------------------------------------------------------------------ data set


@dataclass
class TrainData:
    """Everything the trainer needs about the data, and the lineage the bundle records."""

    classes: list[str]
    display_names: list[str]
    train: ImageDataset
    valid: ImageDataset
    test: ImageDataset | None
    lineage: dict[str, Any] = field(default_factory=dict)


def fingerprint(classes: list[str], counts: dict[str, int]) -> str:
    return hashlib.sha256(
        json.dumps({"classes": classes, "num_files": counts}, sort_keys=True).encode()
    ).hexdigest()


def _lineage(
    source: str, root: Path, dirs: dict[str, Path | None], classes: list[str], counts: dict[str, int]
) -> dict[str, Any]:
    return {
        "source": source,
        "root": str(root.resolve()),
        **{f"{k}_dir": (str(v.resolve()) if v else None) for k, v in dirs.items()},
        "num_files": counts,
        "fingerprint": fingerprint(classes, counts),
    }


def _datasets(cfg: Config, sources: dict[str, ImageSource | None]) -> dict[str, ImageDataset | None]:
    spec, seed = cfg.preprocess.spec(), cfg.run.seed
    tfs = {
        "train": train_transform(cfg.augment.spec(), spec),
        "valid": eval_transform(spec),
        "test": eval_transform(spec),
    }
    return {k: (ImageDataset(s, tfs[k], seed) if s is not None else None) for k, s in sources.items()}


def load_folder_data(cfg: Config) -> TrainData:
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data folder not found: {root} (set data.root to a folder with train/ and valid/)")
    dirs = {split: find_split(root, split) for split in SPLIT_DIRS}
    if dirs["train"] is None:
        raise UserError(f"no train/ folder in {root}; expected {root}/train/<class>/<images>")
    if dirs["valid"] is None:
        raise UserError(
            f"no validation split in {root}: expected one of "
            f"{', '.join(str(root / n) for n in SPLIT_DIRS['valid'])}"
        )
    classes = list_classes(dirs["train"])
    samples = {split: (list_samples(d, classes) if d else None) for split, d in dirs.items()}
    for split in ("train", "valid"):
        if not samples[split]:
            raise UserError(f"{dirs[split]} holds no images in its class folders")
    if dirs["test"] is not None and not samples["test"]:
        samples["test"], dirs["test"] = None, None  # an empty test/ is the same as none
    for split, s in samples.items():
        if s:
            check_split_decodes(split, dirs[split], [p for p, _ in s])
    counts = {split: len(s or []) for split, s in samples.items()}
    ds = _datasets(cfg, {k: (FolderSource(s) if s else None) for k, s in samples.items()})
    names = load_display_names(classes, root / CAT_TO_NAME)
    return TrainData(
        classes, names, ds["train"], ds["valid"], ds["test"], _lineage("folder", root, dirs, classes, counts)
    )


def load_cifar10(cfg: Config) -> TrainData:
    """torchvision's CIFAR-10; its test split serves as validation (and as the final test), as in the tutorial."""
    from torchvision.datasets import CIFAR10

    root = Path(cfg.data.root).expanduser()
    try:
        parts = {
            train: CIFAR10(str(root), train=train, download=cfg.data.download) for train in (True, False)
        }
    except RuntimeError as exc:
        raise UserError(
            f"CIFAR-10 not found or corrupted in {root / CIFAR10.base_folder} ({exc}); set "
            "data.download: true (needs network) or data.root to the folder holding it"
        ) from None
    except OSError as exc:  # network failure during download
        raise UserError(f"could not download CIFAR-10 to {root}: {exc}") from None
    classes = list(parts[True].classes)
    sources = {
        "train": ArraySource(parts[True].data, parts[True].targets, "cifar10/train"),
        "valid": ArraySource(parts[False].data, parts[False].targets, "cifar10/test"),
    }
    sources["test"] = sources["valid"]
    counts = {"train": len(sources["train"]), "valid": len(sources["valid"]), "test": len(sources["valid"])}
    ds = _datasets(cfg, sources)
    dirs = {"train": None, "valid": None, "test": None}
    return TrainData(
        classes,
        list(classes),
        ds["train"],
        ds["valid"],
        ds["test"],
        _lineage("cifar10", root, dirs, classes, counts),
    )


SOURCES: dict[str, Callable[[Config], TrainData]] = {"folder": load_folder_data, "cifar10": load_cifar10}


def load_data(cfg: Config) -> TrainData:
    try:
        loader = SOURCES[cfg.data.source]
    except KeyError:
        raise UserError(f"unknown data.source {cfg.data.source!r}; valid: {', '.join(SOURCES)}") from None
    return loader(cfg)


# ------------------------------------------------------------------------------------------ loaders


def train_sampler(balance: str, labels: Sequence[int], seed: int) -> Sampler:
    """data.balance=sampler: classes drawn evenly (train.balance); otherwise each image once per epoch."""
    from train.balance import BalancedSampler

    return BalancedSampler(labels, seed) if balance == "sampler" else EpochSampler(len(labels), seed)


def make_loader(
    ds: Dataset,
    batch_size: int,
    num_workers: int,
    collate: Callable,
    sampler=None,
    pin=False,
    drop_last=False,
) -> DataLoader:
    """Every loader of a run (and of train/bench.py's feeds, so they time the same settings): train ones
    draw from `sampler`, eval ones (no sampler) read in order."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


def train_loader(
    ds: ImageDataset,
    batch_size: int,
    seed: int,
    num_workers: int,
    pin: bool,
    drop_last: bool = False,
    balance: str = "none",
) -> DataLoader:
    """drop_last: see train.balance.drop_last_batch (compile; a last batch of one image)."""
    sampler = train_sampler(balance, ds.source.labels, seed)
    return make_loader(ds, batch_size, num_workers, collate_train, sampler, pin, drop_last)


def eval_loader(ds: ImageDataset, batch_size: int, num_workers: int, pin: bool) -> DataLoader:
    return make_loader(ds, batch_size, num_workers, collate_eval, pin=pin)


def encoded_train_loader(
    samples: Sequence[tuple[str, int]],
    batch_size: int,
    seed: int,
    num_workers: int,
    drop_last: bool = False,
    device_decode: bool = True,
    balance: str = "none",
) -> DataLoader:
    """GPU path: file bytes in the CPU path's (epoch, index) order; the device decodes and augments them."""
    ds = EncodedImages(samples, READ_THREADS, device_decode=device_decode)
    sampler = train_sampler(balance, [y for _, y in samples], seed)
    return make_loader(ds, batch_size, num_workers, collate_encoded, sampler, drop_last=drop_last)


def encoded_eval_loader(
    samples: Sequence[tuple[str, int]], batch_size: int, num_workers: int, device_decode: bool = True
) -> DataLoader:
    ds = EncodedImages(samples, READ_THREADS, device_decode=device_decode)
    return make_loader(ds, batch_size, num_workers, collate_encoded)


def preview_batch(ds: ImageDataset, seed: int, n: int = 16) -> tuple[torch.Tensor, list[int]]:
    """The first `n` readable augmented images of epoch 0, exactly as the trainer sees them."""
    sampler = EpochSampler(len(ds), seed)
    images, labels = [], []
    for key in sampler:
        x, y, _ = ds[key]
        if x is not None:
            images.append(x)
            labels.append(y)
        if len(images) == n:
            break
    return (torch.stack(images) if images else torch.empty(0, 3, 1, 1, dtype=torch.uint8)), labels
