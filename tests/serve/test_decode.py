"""Decoding: the CPU path is exactly the training eval transform; EXIF orientation honoured; bounded streaming."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from core.images import decode_image
from core.jpeg import route_jpeg
from core.preprocess import EvalSpec, eval_transform
from serve.decode import ORIENT, DecodePipeline, cpu_decode, gpu_decode, spec_key
from serve.discover import Item
from tests.serve.helpers import jpeg_bytes, picture, save_picture

SPEC = EvalSpec(resize=37, crop=32)


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, quality=100, subsampling=0, exif=exif.tobytes())


def test_cpu_path_equals_core_eval_transform_exactly(tmp_path):
    path = save_picture(tmp_path / "p.png", seed=3, size=(70, 45))
    expected = eval_transform(SPEC)(decode_image(path))
    got = cpu_decode(path.read_bytes(), spec_key(SPEC))
    assert got.dtype == np.uint8 and got.shape == (3, 32, 32)
    assert torch.equal(torch.from_numpy(got), expected)


def test_cpu_path_returns_the_reason_for_a_bad_file():
    assert "empty file" in cpu_decode(b"", spec_key(SPEC))
    assert "not an image" in cpu_decode(b"plain text", spec_key(SPEC))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_ops_match_pil_exif_transpose(orientation):
    stored = picture(seed=orientation, size=(9, 6))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif.tobytes())  # lossless, so the comparison is exact
    upright = torch.from_numpy(np.array(ImageOps.exif_transpose(Image.open(buf)))).permute(2, 0, 1)
    got = ORIENT[orientation](torch.from_numpy(np.array(stored)).permute(2, 0, 1))
    assert torch.equal(got, upright)


def test_exif_rotated_jpeg_decodes_like_its_upright_copy(tmp_path):
    upright = picture(seed=2, size=(64, 48))  # multiples of 8: lossless-ish JPEG rotation at q100 4:4:4
    (tmp_path / "up.jpg").write_bytes(_exif_jpeg(upright, 1))
    (tmp_path / "rot.jpg").write_bytes(_exif_jpeg(upright.transpose(Image.Transpose.ROTATE_90), 6))
    items = [Item(str(tmp_path / n), n) for n in ("up.jpg", "rot.jpg")]
    with DecodePipeline(SPEC) as pipe:
        (batch,) = list(pipe.batches(items, 8))
    up, rot = batch.images.float()
    assert (up - rot).abs().mean() < 1.0
    ignored = eval_transform(SPEC)(Image.open(tmp_path / "rot.jpg").convert("RGB")).float()
    assert (up - ignored).abs().mean() > 10  # the stored pixels really are rotated


def test_worker_processes_give_the_same_batches_as_inline_decoding(tmp_path):
    items = [Item(str(save_picture(tmp_path / f"{i}.png", seed=i)), f"{i}.png") for i in range(5)]
    items.append(Item(str(tmp_path / "missing.jpg"), "missing.jpg"))
    with DecodePipeline(SPEC, workers=0) as inline, DecodePipeline(SPEC, workers=1) as procs:
        a, b = list(inline.batches(items, 4)), list(procs.batches(items, 4))
    missing = "file not found (deleted or a broken symlink)"
    assert [x.errors for x in a] == [x.errors for x in b] == [["", "", "", ""], ["", missing]]
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))


def test_pipeline_streams_with_bounded_look_ahead(tmp_path):
    path = str(save_picture(tmp_path / "one.png"))
    pulled = itertools.count()

    def endless():
        while next(pulled) < 100_000:
            yield Item(path, "one.png")

    with DecodePipeline(SPEC, depth=2) as pipe:
        stream = pipe.batches(endless(), 4)
        next(stream), next(stream)
    assert next(pulled) <= 4 * 8  # the two batches consumed plus a few look-ahead batches, not the stream


def test_device_decode_path_runs_on_cpu_too_and_matches_the_cpu_path():
    """torchvision decodes JPEG lists on the CPU as well, so the batch/fallback/orientation logic of the
    GPU path is checked here; the GPU test below checks nvJPEG itself."""
    key = spec_key(SPEC)
    datas = [
        jpeg_bytes(picture(seed=1, size=(60, 44))),
        _exif_jpeg(picture(seed=2, size=(64, 48)), 8),
        b"\xff\xd8\xff not a jpeg after all",
    ]
    decoded = gpu_decode(datas, [1, 8, 1], key, torch.device("cpu"))
    assert decoded[2] is None  # the batch call failed on it; the others survived the one-by-one retry
    for data, img in zip(datas[:2], decoded):
        assert (img.float() - torch.from_numpy(cpu_decode(data, key)).float()).abs().mean() < 1.0


def test_pipeline_routes_each_file_to_the_right_decoder_with_the_same_outcome(tmp_path):
    upright = picture(seed=5, size=(64, 48))
    files = {
        "plain.jpg": jpeg_bytes(upright),
        "exif.jpg": _exif_jpeg(upright, 3),
        "cmyk.jpg": jpeg_bytes(upright.convert("CMYK")),
        "cut.jpg": jpeg_bytes(upright)[:-200],
        "text.jpg": b"hello",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    save_picture(tmp_path / "p.png", seed=6)
    items = [Item(str(tmp_path / n), n) for n in [*files, "p.png"]]
    with DecodePipeline(SPEC) as cpu, DecodePipeline(SPEC, device="cpu", gpu_decode=True) as device:
        (a,), (b,) = list(cpu.batches(items, 8)), list(device.batches(items, 8))
    assert (
        device.stats.device == 2 and device.stats.cpu_total == 4
    )  # counted, with the reasons, for the end line
    assert "2 on the device, 4 on the CPU" in device.report() and cpu.report() == ""
    assert a.errors == b.errors and [bool(e) for e in a.errors] == [False, False, False, True, True, False]
    assert (a.images.float() - b.images.float()).abs().mean() < 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("subsampling, bound", [(0, 2.0), (2, 8.0)])  # 4:4:4 tight; 4:2:0: nvJPEG's chroma
def test_gpu_path_matches_the_cpu_eval_transform_within_tolerance(subsampling, bound):
    key, device = spec_key(EvalSpec(resize=73, crop=64)), torch.device("cuda")
    datas = [
        jpeg_bytes(picture(seed=s, size=(120, 90)), quality=95, subsampling=subsampling) for s in range(4)
    ]
    rotated = picture(seed=9, size=(96, 64)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    datas.append(jpeg_bytes(rotated, quality=95, subsampling=subsampling, exif=exif.tobytes()))
    gpu = gpu_decode(datas, [route_jpeg(d).orientation for d in datas], key, device)
    for data, img in zip(datas, gpu):
        cpu = torch.from_numpy(cpu_decode(data, key))
        assert img is not None and img.is_cuda and img.shape == cpu.shape  # nvJPEG ran: no CPU fallback
        assert (img.cpu().float() - cpu.float()).abs().mean() < bound


def test_batched_resize_crop_equals_the_per_image_reference_within_its_bound():
    """One call for six images of four sizes, against the per-image op in float rounded to uint8 (what
    torchvision runs for uint8 on CUDA): within 1 level (core.resize states the bounds)."""
    from serve.decode import resize_crop, resize_crop_batch

    g = torch.Generator().manual_seed(0)
    sizes = [(50, 40), (40, 50), (50, 40), (37, 37), (64, 33), (50, 40)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]
    for key in (spec_key(SPEC), (40, 24, "bicubic")):
        batch = resize_crop_batch(images, key)
        assert batch.shape == (len(images), 3, key[1], key[1])
        for img, got in zip(images, batch):
            want = resize_crop(img.float(), key).round().clamp(0, 255)
            assert (got.float() - want).abs().max() <= 1


def test_mixed_sizes_cost_one_resize_call_per_batch(tmp_path, monkeypatch):
    """A batch of photos of all-different sizes used to cost one resize per size (issue 15, item 5)."""
    import serve.decode as decode

    calls = []
    real = decode.eval_resize_crop
    monkeypatch.setattr(
        decode, "eval_resize_crop", lambda images, *a: calls.append(len(images)) or real(images, *a)
    )
    for i in range(12):
        (tmp_path / f"{i:02d}.jpg").write_bytes(jpeg_bytes(picture(seed=i, size=(40 + 3 * i, 50 + i))))
    items = [Item(str(p), p.name) for p in sorted(tmp_path.iterdir())]
    with DecodePipeline(SPEC, device="cpu", gpu_decode=True) as pipe:
        batches = list(pipe.batches(items, 6))
    assert [len(b.images) for b in batches] == [6, 6] and calls == [6, 6]  # 12 sizes, 2 batches, 2 calls


def test_the_decode_threads_stream_is_made_once_per_pipeline():
    from tests.fake_streams import FakeStreams

    streams = FakeStreams()
    pipe = DecodePipeline(SPEC, device="cpu", streams=streams)
    pipe.device = torch.device("cuda", 0)  # only the stream bookkeeping runs: nothing touches a GPU
    assert pipe.side_stream() is pipe.side_stream() and len(streams.sides) == 1
    pipe.close()


def test_pipeline_decodes_in_its_own_thread_and_raises_its_errors_in_the_caller(tmp_path, monkeypatch):
    import threading

    items = [Item(str(save_picture(tmp_path / f"{i}.png", seed=i)), f"{i}.png") for i in range(6)]
    seen = set()
    finish = DecodePipeline._finish

    def spy(self, *args):
        seen.add(threading.current_thread().name)
        return finish(self, *args)

    monkeypatch.setattr(DecodePipeline, "_finish", spy)
    with DecodePipeline(SPEC) as pipe:
        assert sum(len(b.images) for b in pipe.batches(items, 4)) == 6
    assert seen == {"imgclf-decode"}

    def broken(self, *args):
        raise OSError("disk on fire")

    monkeypatch.setattr(DecodePipeline, "_finish", broken)
    with DecodePipeline(SPEC) as pipe, pytest.raises(OSError, match="disk on fire"):
        list(pipe.batches(items, 4))


def test_predictions_launch_the_model_on_a_batch_before_collecting_the_previous_one(tmp_path):
    from serve.predict import predictions

    items = [Item(str(save_picture(tmp_path / f"{i}.png", seed=i)), f"{i}.png") for i in range(7)]
    items.insert(3, Item(str(tmp_path / "missing.png"), "missing.png"))
    events = []

    class Model:
        device = torch.device("cpu")

        def forward(self, images):
            events.append(("model", len(images)))
            return images.float().mean(dim=(2, 3))  # 3 "classes": per-channel means

    with DecodePipeline(SPEC) as pipe:
        for batch, probs in predictions(pipe, Model(), items, 3):
            events.append(("rows", len(batch.items)))
            expected = torch.softmax(batch.images.float().mean(dim=(2, 3)), dim=1).numpy()
            assert np.allclose(probs, expected) and batch.errors.count("") == len(probs)
    assert events == [("model", 3), ("model", 2), ("rows", 3), ("model", 2), ("rows", 3), ("rows", 2)]


def _mixed_folder(root, n: int = 24):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = picture(seed=i, size=(60 + 8 * (i % 3), 44))
        kinds = {
            0: ("png", {}),
            1: ("jpg", {"subsampling": 0, "quality": 95}),
            2: ("jpg", {"progressive": True}),
        }
        ext, kw = kinds[i % 3]
        img.save(root / f"{i:03d}.{ext}", **kw)
    return [Item(str(p), p.name) for p in sorted(root.iterdir())]


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_cpu_pipeline_and_counts_its_cpu_fallbacks(tmp_path):
    items = _mixed_folder(tmp_path / "mixed")
    with DecodePipeline(SPEC, device="cuda", workers=1) as gpu, DecodePipeline(SPEC) as cpu:
        a = list(gpu.batches(items, 7))
        b = list(cpu.batches(items, 7))
        stats = gpu.stats
    assert stats.device == 8 and stats.cpu == {"progressive JPEG": 8, "not a JPEG": 8}  # nvJPEG really ran
    for x, y in zip(a, b):
        assert x.images.is_cuda and x.errors == y.errors
        assert (x.images.cpu().float() - y.images.float()).abs().mean() < 2.0


@pytest.mark.gpu
def test_gpu_decode_thread_under_load_gives_every_batch_a_synchronous_decode_gives(tmp_path):
    """The nvJPEG / caching-allocator race shows as batches mixed or corrupted while the consumer's stream
    is busy; compare every batch with a decode done alone, synchronously."""
    root = tmp_path / "many"
    root.mkdir()
    for i in range(512):
        (root / f"{i:04d}.jpg").write_bytes(jpeg_bytes(picture(seed=i, size=(96 + i % 5, 80)), subsampling=0))
    items = [Item(str(p), p.name) for p in sorted(root.iterdir())]
    load = torch.randn(2048, 2048, device="cuda")
    with DecodePipeline(SPEC, device="cuda") as pipe:
        for k, batch in enumerate(pipe.batches(items, 32)):
            for _ in range(8):
                load = (load @ load).clamp_(-1, 1)  # keep the consumer stream busy while decode runs ahead
            got = batch.images.clone()
            datas = [Path(it.source).read_bytes() for it in batch.items]
            torch.cuda.synchronize()
            ref = torch.stack(gpu_decode(datas, [1] * len(datas), spec_key(SPEC), torch.device("cuda")))
            torch.cuda.synchronize()
            assert torch.equal(got, ref), f"batch {k} differs from its synchronous decode"


@pytest.mark.gpu
def test_gpu_predictions_come_back_in_batch_order(bundle, tmp_path):
    from serve.backends import open_backend
    from serve.predict import predictions

    items = _mixed_folder(tmp_path / "mixed", n=12)
    backend = open_backend(bundle, torch.device("cuda"))
    with DecodePipeline(SPEC, device="cuda") as pipe:
        got = [(b.images.cpu(), p) for b, p in predictions(pipe, backend, items, 5)]
    for images, probs in got:
        expected = torch.softmax(backend(images), dim=1).numpy()
        assert probs.shape == expected.shape and np.allclose(probs, expected, atol=2e-2)


@pytest.mark.gpu
def test_alias_a_decode_thread_stream_equal_to_the_decode_stream_is_refused(tmp_path):
    """Serve follows the same rule as training: the decode stream (outside PyTorch's pool) is never the
    caller's; should a pipeline's stream be it (injected here), decoding refuses instead of racing."""
    from core.streams import decode_stream

    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(picture(seed=1, size=(64, 48)), subsampling=0))
    items = [Item(str(tmp_path / "a.jpg"), "a.jpg")]
    with DecodePipeline(SPEC, device="cuda") as pipe:
        pipe._side = decode_stream("cuda")
        with pytest.raises(RuntimeError, match="decode stream"):
            list(pipe.batches(items, 4))
