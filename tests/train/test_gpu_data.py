"""The GPU data path end to end: file bytes through a DataLoader, decode + augment + normalize per batch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from core.images import decode_image, is_image_file
from core.preprocess import AugmentSpec, EvalSpec, Normalize, eval_transform
from train.gpu_data import (
    EncodedImages,
    GpuPipeline,
    collate_encoded,
    engine_batches,
    prefetch,
    resolve_decode,
)


def folder_samples(root) -> list[tuple[str, int]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    return [(str(f), k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir()) if is_image_file(f)]


def loader(samples, batch_size=5, **kw) -> DataLoader:
    return DataLoader(EncodedImages(samples, threads=2), batch_size=batch_size, collate_fn=collate_encoded, **kw)


def test_eval_batches_equal_the_cpu_eval_transform_then_normalize(demo_root):
    samples = folder_samples(demo_root / "valid")
    spec = EvalSpec(resize=40, crop=32)
    pipe = GpuPipeline(spec, "cpu")
    normalize = Normalize(spec.mean, spec.std)
    seen = 0
    for raw in loader(samples):
        batch = pipe(raw)
        want = normalize(torch.stack([eval_transform(spec)(decode_image(samples[int(i)][0])) for i in raw.indices]))
        assert batch.images.shape == want.shape and batch.valid.all() and batch.bad == []
        assert (batch.images - want).abs().max() <= 1.0 / (255 * min(spec.std)) + 1e-5  # at most 1 uint8 level
        assert batch.labels.tolist() == [samples[int(i)][1] for i in raw.indices]
        seen += len(raw)
    assert seen == len(samples)


def test_a_bad_file_keeps_its_slot_marked_invalid_and_is_reported(demo_root, tmp_path):
    samples = folder_samples(demo_root / "valid")[:4]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    samples.insert(1, (str(tmp_path / "broken.jpg"), 0))
    samples.append((str(tmp_path / "missing.jpg"), 0))
    raw = next(iter(loader(samples, batch_size=6)))
    batch = GpuPipeline(EvalSpec(40, 32), "cpu", AugmentSpec(), seed=0)(raw, epoch=0)
    assert batch.images.shape == (6, 3, 32, 32)
    assert batch.valid.tolist() == [True, False, True, True, True, False]
    assert [i for i, _ in batch.bad] == [1, 5]
    assert "cannot read" in batch.bad[1][1]
    spec = EvalSpec(40, 32)
    zero = Normalize(spec.mean, spec.std)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert torch.equal(batch.images[~batch.valid], zero.expand(2, -1, -1, -1))  # a fixed, harmless filler


def test_train_augmentation_is_keyed_by_epoch_and_index_not_by_batch_position(demo_root):
    samples = folder_samples(demo_root / "train")[:6]
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu", AugmentSpec(rotation=15.0), seed=3)
    ds = EncodedImages(samples, threads=2)
    forward = pipe(collate_encoded(ds.__getitems__([(1, k) for k in range(6)])))
    backward = pipe(collate_encoded(ds.__getitems__([(1, k) for k in reversed(range(6))])))
    assert torch.equal(forward.images, backward.images.flip(0))
    explicit = pipe(collate_encoded(ds.__getitems__(list(range(6)))), epoch=1)
    assert torch.equal(explicit.images, forward.images)
    other_epoch = pipe(collate_encoded(ds.__getitems__([(2, k) for k in range(6)])))
    assert not torch.equal(other_epoch.images, forward.images)


def test_worker_processes_read_the_bytes(demo_root):
    samples = folder_samples(demo_root / "test")
    batches = list(loader(samples, batch_size=4, num_workers=2))
    assert sum(len(b) for b in batches) == len(samples)
    assert all(b.data[0].dtype == torch.uint8 and b.data[0].numel() > 0 for b in batches)


def test_prefetch_yields_the_same_batches_in_order_and_stops_cleanly_when_abandoned(demo_root):
    samples = folder_samples(demo_root / "valid")
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu")
    direct = [pipe(raw).images for raw in loader(samples)]
    ahead = [b.images for b in prefetch(loader(samples), pipe)]
    assert len(ahead) == len(direct) and all(torch.equal(a, b) for a, b in zip(ahead, direct))
    gen = prefetch(loader(samples), pipe, depth=1)
    next(gen)
    gen.close()  # must not hang on the producer thread


def test_prefetch_surfaces_errors_from_the_producer(demo_root):
    def broken():
        yield from ()
        raise OSError("disk vanished")

    gen = prefetch(broken(), GpuPipeline(EvalSpec(40, 32), "cpu"))
    try:
        next(gen)
    except OSError as exc:
        assert "disk vanished" in str(exc)
    else:
        raise AssertionError("the producer's error was swallowed")


def test_decode_auto_picks_the_gpu_path_only_on_cuda():
    assert resolve_decode("auto", "cuda:0") == "gpu"
    assert resolve_decode("auto", "cpu") == "cpu"
    assert resolve_decode("gpu", "cpu") == "gpu" and resolve_decode("cpu", "cuda") == "cpu"


def test_engine_batches_drop_bad_files_in_training_and_keep_their_slot_for_evaluation(demo_root, tmp_path):
    samples = folder_samples(demo_root / "valid")[:3]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    samples.insert(1, (str(tmp_path / "broken.png"), 2))
    name = lambda i: Path(samples[i][0]).name
    spec = EvalSpec(40, 32)
    pipe = GpuPipeline(spec, "cpu", normalize=False)
    images, labels, notes = next(engine_batches(loader(samples, batch_size=4), pipe, name))
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.tolist() == [samples[k][1] for k in (0, 2, 3)]
    assert len(notes) == 1 and notes[0].startswith("broken.png\t") and "not an image" in notes[0]
    assert (images[0].int() - eval_transform(spec)(decode_image(samples[0][0])).int()).abs().max() <= 1
    images, labels, notes = next(engine_batches(loader(samples, batch_size=4), pipe, name, ignore_label=-100))
    assert images.shape == (4, 3, 32, 32) and labels.tolist()[1] == -100 and len(notes) == 1


@pytest.mark.gpu
def test_prefetch_on_cuda_matches_the_cpu_pipeline(demo_root):
    samples = folder_samples(demo_root / "train")
    aug, spec = AugmentSpec(rotation=10.0), EvalSpec(40, 32)
    on_cpu = [b.images for b in prefetch(loader(samples), GpuPipeline(spec, "cpu", aug, seed=2), epoch=1)]
    on_gpu = [b for b in prefetch(loader(samples), GpuPipeline(spec, "cuda", aug, seed=2, channels_last=True), epoch=1)]
    assert all(b.images.is_cuda and b.images.is_contiguous(memory_format=torch.channels_last) for b in on_gpu)
    for a, b in zip(on_cpu, on_gpu):
        assert (a - b.images.cpu()).abs().max() < 0.1  # within a couple of uint8 levels after normalization
