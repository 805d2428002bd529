"""The GPU data path end to end: file bytes through a DataLoader, decode + augment + normalize per batch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader

from core.images import decode_image, is_image_file
from core.preprocess import AugmentSpec, EvalSpec, Normalize, eval_transform
from core.streams import decode_stream
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
    return [
        (str(f), k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir()) if is_image_file(f)
    ]


def loader(samples, batch_size=5, **kw) -> DataLoader:
    return DataLoader(
        EncodedImages(samples, threads=2), batch_size=batch_size, collate_fn=collate_encoded, **kw
    )


def test_eval_batches_equal_the_cpu_eval_transform_then_normalize(demo_root):
    samples = folder_samples(demo_root / "valid")
    spec = EvalSpec(resize=40, crop=32)
    pipe = GpuPipeline(spec, "cpu")
    normalize = Normalize(spec.mean, spec.std)
    seen = 0
    for raw in loader(samples):
        batch = pipe(raw)
        want = normalize(
            torch.stack([eval_transform(spec)(decode_image(samples[int(i)][0])) for i in raw.indices])
        )
        assert batch.images.shape == want.shape and batch.valid.all() and batch.bad == []
        assert (batch.images - want).abs().max() <= 1.0 / (
            255 * min(spec.std)
        ) + 1e-5  # at most 1 uint8 level
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


def test_engine_batches_keep_a_masked_slot_for_bad_files(demo_root, tmp_path):
    """Training and evaluation alike: a zero image labelled ignore_label, so the batch shape never changes
    (torch.compile would recompile on a dropped row) and the loss masks it out."""
    samples = folder_samples(demo_root / "valid")[:3]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    samples.insert(1, (str(tmp_path / "broken.png"), 2))
    name = lambda i: Path(samples[i][0]).name
    spec = EvalSpec(40, 32)
    pipe = GpuPipeline(spec, "cpu", normalize=False)
    images, labels, notes = next(engine_batches(loader(samples, batch_size=4), pipe, name, ignore_label=-100))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32) and images[1].eq(0).all()
    assert labels.tolist() == [samples[0][1], -100, samples[2][1], samples[3][1]]
    assert len(notes) == 1 and notes[0].startswith("broken.png\t") and "not an image" in notes[0]
    assert (images[0].int() - eval_transform(spec)(decode_image(samples[0][0])).int()).abs().max() <= 1


def _write(path: Path, img: Image.Image, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def test_a_batch_crosses_from_the_workers_as_one_buffer_and_non_device_files_arrive_decoded(tmp_path):
    """Per-file tensors cost one shared-memory fd each on the way to the main process; a packed batch a few.
    The router runs in the worker: PNG/progressive/CMYK come decoded by PIL there, baseline JPEGs as bytes."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    samples = [
        (_write(tmp_path / "a.jpg", img, quality=90), 0),
        (_write(tmp_path / "b.png", img), 1),
        (_write(tmp_path / "c.jpg", img, progressive=True), 2),
        (_write(tmp_path / "d.jpg", img.convert("CMYK")), 3),
        (str(tmp_path / "missing.jpg"), 4),
    ]
    (batch,) = list(loader(samples, batch_size=5, num_workers=1))
    storages = {t.untyped_storage().data_ptr() for t in batch.data if t.numel()}
    assert len(storages) == 1  # views into one buffer
    assert (
        batch.shapes[0].tolist() == [0, 0, 0]
        and bytes(batch.blob(0).numpy()) == Path(samples[0][0]).read_bytes()
    )
    for k in (1, 2, 3):
        want = torch.from_numpy(np.array(decode_image(samples[k][0]))).permute(2, 0, 1)
        assert torch.equal(batch.blob(k).view(batch.shapes[k].tolist()), want)
    assert batch.cpu_reasons == {1: "not a JPEG", 2: "progressive JPEG", 3: "CMYK/YCCK/RGB-coded JPEG"}
    assert list(batch.read_errors) == [4]
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu")
    out = pipe(batch)
    assert out.valid.tolist() == [True, True, True, True, False]
    assert pipe.stats.device == 1 and pipe.stats.cpu_total == 3  # counted, for the run's one-line report


class CountingLoader:
    """A loader that records which thread pulls each batch."""

    def __init__(self, batches):
        self.batches, self.threads = batches, []

    def __iter__(self):
        for b in self.batches:
            self.threads.append(threading.current_thread().name)
            yield b


def test_prefetch_pulls_from_the_loader_in_its_background_thread(demo_root):
    """Unpickling a worker's batch blocks on the host: it must not run in the training thread."""
    samples = folder_samples(demo_root / "valid")
    source = CountingLoader(list(loader(samples)))
    out = list(prefetch(source, GpuPipeline(EvalSpec(40, 32), "cpu")))
    assert len(out) == len(source.batches) and threading.current_thread().name not in source.threads


def jpeg_folder(root: Path, n: int, subsampling: int = 0, seed: int = 0) -> list[tuple[str, int]]:
    """n smooth colour JPEGs of varied sizes (4:4:4 by default: nvJPEG and libjpeg agree to IDCT rounding)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(n):
        h, w = 48 + 8 * (k % 7), 64 + 4 * (k % 5)
        y, x = np.mgrid[0:h, 0:w] / 64
        arr = np.stack([np.sin(5 * x + k), np.cos(4 * y - k), np.sin(3 * (x + y))], -1) * 100 + 128
        arr = (arr + rng.normal(0, 5, arr.shape)).clip(0, 255).astype(np.uint8)
        samples.append(
            (_write(root / f"{k:03d}.jpg", Image.fromarray(arr), quality=90, subsampling=subsampling), k % 3)
        )
    return samples


@pytest.mark.gpu
def test_prefetch_on_cuda_matches_the_cpu_pipeline_on_444_jpegs_and_nvjpeg_really_ran(tmp_path):
    samples = jpeg_folder(tmp_path / "jpegs", 12)
    aug, spec = AugmentSpec(rotation=10.0), EvalSpec(40, 32)
    cpu_pipe = GpuPipeline(spec, "cpu", aug, seed=2, normalize=False)
    on_cpu = [b.images for b in prefetch(loader(samples), cpu_pipe, epoch=1)]
    gpu_pipe = GpuPipeline(spec, "cuda", aug, seed=2, normalize=False)
    on_gpu = list(prefetch(loader(samples), gpu_pipe, epoch=1))
    assert gpu_pipe.stats.cpu_total == 0 and gpu_pipe.stats.device == len(samples)  # no silent CPU fallback
    assert all(b.images.is_cuda for b in on_gpu)
    for a, b in zip(on_cpu, on_gpu):
        diff = (a.int() - b.images.cpu().int()).abs()
        # uint8 levels, realistic: nvJPEG's IDCT vs libjpeg's islow is up to 3 levels with a fast IDCT
        # (reviews/sim-2026-12-b/emulate3.py), and the CUDA vs CPU resampling adds up to 2 (test_gpu_augment)
        assert diff.max() <= 8 and diff.float().mean() < 1.5


@pytest.mark.gpu
def test_prefetch_on_cuda_on_420_jpegs_stays_within_nvjpegs_chroma_upsampling_difference(tmp_path):
    samples = jpeg_folder(tmp_path / "jpegs", 12, subsampling=2)
    spec = EvalSpec(40, 32)
    on_cpu = [b.images for b in prefetch(loader(samples), GpuPipeline(spec, "cpu", normalize=False))]
    gpu_pipe = GpuPipeline(spec, "cuda", normalize=False)
    on_gpu = [b.images.cpu() for b in prefetch(loader(samples), gpu_pipe)]
    assert gpu_pipe.stats.cpu_total == 0
    for a, b in zip(on_cpu, on_gpu):
        assert (a.int() - b.int()).abs().float().mean() < 8  # nearest vs fancy chroma upsampling


@pytest.mark.gpu
def test_alias_pressure_prefetch_under_a_busy_gpu_gives_every_batch_bit_for_bit_as_a_synchronous_run(
    tmp_path,
):
    """The stream race (pytorch/vision#9606): decode of batch k+1 must never write into memory batch k's
    queued kernels still read. 40 pool streams are drawn first (more than a turn of PyTorch's 32-stream
    pool: with a pool decode stream this aliased it), a matmul loop keeps the consumer stream busy; 20
    epochs of 6 batches each, through ONE pipeline (its side streams made once)."""
    streams = [torch.cuda.Stream() for _ in range(40)]
    samples = jpeg_folder(tmp_path / "jpegs", 48)
    aug, spec = AugmentSpec(rotation=15.0, color_jitter=0.2), EvalSpec(56, 48)
    raw = list(loader(samples, batch_size=8))
    reference = []
    for b in raw:  # synchronous: one batch at a time on the default stream, the device idle otherwise
        reference.append(GpuPipeline(spec, "cuda", aug, seed=1)(b, epoch=0).images.cpu())
        torch.cuda.synchronize()
    pipe = GpuPipeline(spec, "cuda", aug, seed=1)
    a = torch.randn(2048, 2048, device="cuda")
    for _ in range(20):
        for k, b in enumerate(prefetch(raw, pipe, epoch=0, depth=3)):
            for _ in range(3):
                a = (a @ a).tanh()  # queued before the batch is read: the consumer stream stays busy
            got = (
                b.images.cpu()
            )  # read on the consumer stream behind the matmuls; the host waits, decode runs on
            assert torch.equal(got, reference[k])
    assert pipe.stats.cpu_total == 0 and all(st != decode_stream("cuda") for st in streams)


@pytest.mark.gpu
def test_alias_injected_consumer_stream_equal_to_the_decode_stream_is_refused(tmp_path):
    """PyTorch's pool index is a counter mod 32, so drawing streams does not reliably alias: inject it."""
    raw = list(loader(jpeg_folder(tmp_path / "jpegs", 8), batch_size=4))
    pipe = GpuPipeline(EvalSpec(40, 32), "cuda")
    pipe._sides = (decode_stream("cuda"), decode_stream("cuda"))  # what a pool decode stream could become
    with pytest.raises(RuntimeError, match="decode stream"):
        list(prefetch(raw, pipe))


def test_without_a_working_device_decoder_the_workers_decode_every_file_and_it_is_counted(demo_root):
    from core.jpeg import NO_DEVICE_DECODER

    samples = folder_samples(demo_root / "valid")[:6]
    ds = EncodedImages(samples, threads=2, device_decode=False)
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu")
    batch = collate_encoded(ds.__getitems__(list(range(6))))
    assert set(batch.cpu_reasons.values()) == {NO_DEVICE_DECODER} and len(batch.cpu_reasons) == 6
    direct = pipe(collate_encoded(EncodedImages(samples, threads=2).__getitems__(list(range(6)))))
    assert torch.equal(pipe(batch).images, direct.images)  # same pixels: PIL and libjpeg agree on the CPU
    assert pipe.stats.cpu[NO_DEVICE_DECODER] == 6


# ------------------------------------------------------------------------------ what stands for GPU cost


def test_one_pipeline_draws_its_two_side_streams_once_over_many_epochs(demo_root):
    """A prefetch per epoch used to draw new pool streams (2 per epoch): the 16th epoch then aliased."""
    from tests.fake_streams import FakeStreams

    streams = FakeStreams()
    raw = list(loader(folder_samples(demo_root / "valid")))
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu", AugmentSpec(), streams=streams)
    for epoch in range(3):
        assert len(list(prefetch(raw, pipe, epoch=epoch))) == len(raw)
    assert len(streams.sides) == 2  # decode stage, augment stage: drawn once
    decode_side, augment_side = pipe.side_streams()
    waits = streams.events("wait")
    # per batch: the augment stage waits for the decode stage, the consumer for the augment stage
    assert waits.count(("wait", augment_side, decode_side)) == 3 * len(raw)
    assert waits.count(("wait", streams.default, augment_side)) == 3 * len(raw)


def test_the_decode_and_augment_stages_run_in_two_threads(demo_root, monkeypatch):
    raw = list(loader(folder_samples(demo_root / "valid")))
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu", AugmentSpec())
    seen = {"decode": set(), "finish": set()}
    for name in seen:
        real = getattr(pipe, name)

        def wrapped(*a, _real=real, _name=name, **k):
            seen[_name].add(threading.current_thread().name)
            return _real(*a, **k)

        monkeypatch.setattr(pipe, name, wrapped)
    list(prefetch(raw, pipe))
    assert seen["decode"] == {"imgclf-gpu-decode_0"} and seen["finish"] == {"imgclf-gpu-augment_0"}


def test_the_decode_stage_runs_at_most_two_batches_ahead_of_augmentation(demo_root, monkeypatch):
    """Decoded full-size images are the big ones (12 MP photos: ~9 GB a batch): they are bounded, not `depth`."""
    import time

    from train import gpu_data

    raw = list(loader(folder_samples(demo_root / "valid"), batch_size=2))
    pipe = GpuPipeline(EvalSpec(40, 32), "cpu")
    lock, state = threading.Lock(), {"held": 0, "most": 0}
    decode, finish = pipe.decode, pipe.finish

    def counted_decode(batch):
        with lock:
            state["held"] += 1
            state["most"] = max(state["most"], state["held"])
        return decode(batch)

    def slow_finish(*a, **k):
        time.sleep(0.05)  # a slow augment stage: the decode thread would run ahead if nothing held it
        with lock:
            state["held"] -= 1
        return finish(*a, **k)

    monkeypatch.setattr(pipe, "decode", counted_decode)
    monkeypatch.setattr(pipe, "finish", slow_finish)
    assert len(list(prefetch(raw, pipe, depth=6))) == len(raw) >= 6
    assert state["most"] == gpu_data.DECODED_AHEAD


class CountTransfers(TorchDispatchMode):
    """Counts host → device copies on the `meta` device (every op with a host tensor in and a meta tensor
    out). A device → host read (.item(), .tolist(), .cpu()) of a meta tensor raises: none can hide."""

    def __init__(self):
        super().__init__()
        self.host_to_device = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" and t.dim() > 0 for t in ins) and any(t.is_meta for t in outs):
            self.host_to_device += 1
        return out


@pytest.mark.parametrize("aug", [AugmentSpec(rotation=10.0, color_jitter=0.2), None])
def test_the_augment_stage_makes_one_pinned_copy_of_parameters_and_labels_and_no_host_sync(aug, demo_root):
    """The old feed made 4-6 pageable copies per batch, each a host sync on CUDA. Run the augment stage on
    the meta device with decoded images of 5 sizes: every host → device copy is counted, reads are errors."""
    raw = collate_encoded(
        EncodedImages(folder_samples(demo_root / "valid")[:5], threads=1).__getitems__([0, 1, 2, 3, 4])
    )
    decoded = [torch.empty(3, 40 + 3 * k, 50 - 2 * k, dtype=torch.uint8, device="meta") for k in range(5)]
    pipe = GpuPipeline(EvalSpec(40, 32), "meta", aug)
    for _ in range(2):  # two batches
        with CountTransfers() as count:
            out = pipe.finish(raw, decoded, {}, epoch=1)
        assert out.images.shape == (5, 3, 32, 32) and out.images.is_meta
        # train: parameters + labels; eval: resize parameters + labels. Each one pinned non_blocking copy.
        assert count.host_to_device == 2
    assert pipe.uploads.copies == (4 if aug else 2)  # the resize parameters of eval go in their own copy
