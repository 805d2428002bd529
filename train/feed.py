"""Which data path feeds the train step (data.decode): uint8 batches decoded and augmented by the CPU loaders,
or file bytes decoded and augmented on the device by train.gpu_data. Either way the loop gets
(uint8 images, labels, bad-file notes) tuples on the device, and normalizes them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch
from torch.utils.data import DataLoader

from core.config import Config
from core.errors import UserError
from core.jpeg import DecodeStats, device_decoder_available, route_jpeg
from train.data import (
    IGNORE_LABEL,
    EpochSampler,
    FolderSource,
    ImageDataset,
    TrainData,
    encoded_eval_loader,
    encoded_train_loader,
    eval_loader,
    preview_batch,
    train_loader,
)
from train.decodable import spread
from train.gpu_data import EncodedImages, GpuPipeline, collate_encoded, engine_batches, resolve_decode

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]
GPU_PATH_MAX_WORKERS = 4  # workers mostly read bytes on the GPU path: a few per process keep up with nvJPEG
CPU_SHARE_PROBE = 64  # files whose route is checked up front, spread over the training set


class Feed(Protocol):
    mode: str

    def loaders(
        self, batch_size: int, eval_batch_size: int, pin: bool, drop_last: bool = False
    ) -> tuple[DataLoader, DataLoader]: ...
    def report_once(self, log: Callable[[str], None]) -> None: ...
    def train_batches(self, loader: Iterable) -> Iterable[Batch]: ...
    def eval_batches(self, loader: Iterable) -> Iterable[Batch]: ...
    def preview(self, n: int) -> tuple[torch.Tensor, list[int]]: ...


def decode_mode(cfg: Config, device: torch.device) -> str:
    """`data.decode` → 'cpu' or 'gpu' for this run. Only image folders have files to hand to the device
    decoder: `auto` keeps CIFAR-10 (in-memory arrays) on the CPU path, an explicit `gpu` is refused."""
    if cfg.data.source != "folder":
        if cfg.data.decode == "gpu":
            raise UserError(
                f"data.decode: gpu decodes image files, but data.source: {cfg.data.source} is "
                "already decoded in memory; use data.decode: cpu (or auto)"
            )
        return "cpu"
    return resolve_decode(cfg.data.decode, device)


class CpuFeed:
    """Decode + augment in DataLoader workers (PIL); the prepared loader already yields engine tuples."""

    mode = "cpu"

    def __init__(self, cfg: Config, data: TrainData, device: torch.device):
        self.data, self.seed, self.workers = data, cfg.run.seed, cfg.data.num_workers
        self.balance = cfg.data.balance

    def loaders(
        self, batch_size: int, eval_batch_size: int, pin: bool, drop_last: bool = False
    ) -> tuple[DataLoader, DataLoader]:
        return (
            train_loader(self.data.train, batch_size, self.seed, self.workers, pin, drop_last, self.balance),
            eval_loader(self.data.valid, eval_batch_size, self.workers, pin),
        )

    def report_once(self, log: Callable[[str], None]) -> None:
        pass  # PIL decodes everything here, in the workers: nothing to report

    def train_batches(self, loader: Iterable) -> Iterable[Batch]:
        return loader

    def eval_batches(self, loader: Iterable) -> Iterable[Batch]:
        return loader

    def preview(self, n: int) -> tuple[torch.Tensor, list[int]]:
        return preview_batch(self.data.train, self.seed, n)


def _samples(ds: ImageDataset) -> list[tuple[str, int]]:
    source = ds.source
    assert isinstance(source, FolderSource), "decode_mode keeps non-folder sources on the CPU path"
    return list(zip(source.paths, source.labels, strict=True))


def cpu_share(samples: list[tuple[str, int]], probe: int = CPU_SHARE_PROBE) -> float:
    """The fraction of a spread sample of files that core.jpeg routes to the CPU decoder (unreadable: CPU)."""
    if not samples:
        return 0.0
    picks = spread(len(samples), probe)
    to_cpu = 0
    for k in picks:
        try:
            to_cpu += not route_jpeg(Path(samples[k][0]).read_bytes()).device
        except OSError:
            to_cpu += 1
    return to_cpu / len(picks)


def gpu_path_workers(num_workers: int, samples: list[tuple[str, int]]) -> int:
    """A few workers when they only read JPEG bytes; all of data.num_workers when a real share of the files
    (PNG, progressive, CMYK...) will be decoded by PIL in them."""
    return num_workers if cpu_share(samples) > 0.1 else min(num_workers, GPU_PATH_MAX_WORKERS)


class GpuFeed:
    """Workers read file bytes (and PIL-decode what nvJPEG does not take); decode (nvJPEG on CUDA) and
    augmentation run batched on the run's device."""

    mode = "gpu"

    def __init__(self, cfg: Config, data: TrainData, device: torch.device):
        spec = cfg.preprocess.spec()
        self.data, self.seed, self.balance = data, cfg.run.seed, cfg.data.balance
        self.train_samples, self.valid_samples = _samples(data.train), _samples(data.valid)
        self.device_decode = device_decoder_available(device)  # if not, PIL decodes all in the workers
        self.workers = (
            gpu_path_workers(cfg.data.num_workers, self.train_samples)
            if self.device_decode
            else cfg.data.num_workers
        )
        # normalize=False: uint8 batches, so the trainer's own prepare() normalizes as on the CPU path
        self.train_pipe = GpuPipeline(
            spec, device, aug=cfg.augment.spec(), seed=cfg.run.seed, normalize=False
        )
        self.eval_pipe = GpuPipeline(spec, device, normalize=False)
        self._reported = False

    def loaders(
        self, batch_size: int, eval_batch_size: int, pin: bool, drop_last: bool = False
    ) -> tuple[DataLoader, DataLoader]:
        return (
            encoded_train_loader(
                self.train_samples,
                batch_size,
                self.seed,
                self.workers,
                drop_last,
                self.device_decode,
                self.balance,
            ),
            encoded_eval_loader(self.valid_samples, eval_batch_size, self.workers, self.device_decode),
        )

    def report_once(self, log: Callable[[str], None]) -> None:
        """How many images the device decoded and how many went to PIL (and why), once per run."""
        stats = DecodeStats()
        stats.merge(self.train_pipe.stats)
        stats.merge(self.eval_pipe.stats)
        if stats.cpu_total and not self._reported:
            self._reported = True
            log(stats.summary())

    def train_batches(self, loader: Iterable) -> Iterable[Batch]:
        return engine_batches(loader, self.train_pipe, self.data.train.source.name, ignore_label=IGNORE_LABEL)

    def eval_batches(self, loader: Iterable) -> Iterable[Batch]:
        return engine_batches(loader, self.eval_pipe, self.data.valid.source.name, ignore_label=IGNORE_LABEL)

    def preview(self, n: int) -> tuple[torch.Tensor, list[int]]:
        """The first `n` readable images of epoch 0 through the training pipeline, as the trainer sees them."""
        keys = list(EpochSampler(len(self.train_samples), self.seed))
        reader = EncodedImages(self.train_samples, threads=4, device_decode=self.device_decode)
        images, labels = [], []
        for start in range(0, len(keys), n):
            if len(labels) >= n:
                break
            raw = collate_encoded(reader.__getitems__(keys[start : start + n]))
            batch = self.train_pipe(raw)
            keep = batch.valid.cpu()
            images.append(batch.images.cpu()[keep])
            labels += raw.labels[keep].tolist()
        return torch.cat(images)[:n], labels[:n]


FEEDS: dict[str, type] = {"cpu": CpuFeed, "gpu": GpuFeed}


__all__ = ["FEEDS", "CpuFeed", "Feed", "GpuFeed", "decode_mode"]
