"""Issue 19 M1 on the GPU training feed (train.encoded → train.gpu_data): where the output comes from the
eval resize (valid/test, and training with augment.enabled false) an image past core.images' bound is
skipped with the CPU path's reason, from its JPEG header before any decode or from its decoded shape
before the resize, and evaluation's one warning counts it apart from undecodable files. The train augment
samples a crop inside the image, so nothing there grows with the image: it trains on such an image, as
the CPU path does. The feed runs on the CPU here (torchvision decodes JPEG lists there too)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.augment import TrainWarp
from core.images import TOO_ELONGATED, TooElongated, decode_image
from core.jpeg import resize_refusal
from core.preprocess import AugmentSpec, EvalSpec, Normalize, eval_transform
from train import gpu_augment, gpu_data
from train.encoded import EncodedImages, collate_encoded
from train.gpu_data import GpuPipeline, engine_batches

SPEC = EvalSpec(resize=37, crop=32)  # bound: 64 x 32² output pixels, so a 2-pixel-wide image > 96 long


def _photo(path, seed: int, size=(48, 40)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    return str(path)


def _thin(path, size=(400, 2), orientation: int = 1):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, (200, 30, 90)).save(path, exif=exif.tobytes())
    return str(path)


def _cpu_reason(path: str) -> str:
    """What the CPU feed's eval transform says of the file."""
    with pytest.raises(TooElongated) as caught:
        eval_transform(SPEC)(decode_image(path))
    return str(caught.value)


def _batch(samples):
    reader = EncodedImages(samples, threads=2)
    return collate_encoded(reader.__getitems__(list(range(len(samples)))))


def _counting_decoder(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = gpu_data.decode_on_device

    def counting(blobs, device, streams=None):
        sizes.extend(int(b.numel()) for b in blobs)
        return real(blobs, device, streams=streams)

    monkeypatch.setattr(gpu_data, "decode_on_device", counting)
    return sizes


def test_m1_gpu_feed_batches_carry_each_jpegs_upright_header_size(tmp_path):
    batch = _batch(
        [
            (_photo(tmp_path / "a.jpg", 1, (48, 40)), 0),
            (_thin(tmp_path / "t.jpg", (2, 400), orientation=6), 1),  # 400 x 2 once upright
            (_thin(tmp_path / "t.png"), 1),  # not a JPEG: decoded by the worker, its shape is the image
        ]
    )
    assert batch.header_hw.tolist() == [[40, 48], [2, 400], [0, 0]]
    assert batch.shapes.tolist() == [[0, 0, 0], [0, 0, 0], [3, 2, 400]]


def test_m1_gpu_feed_eval_skips_thin_images_with_the_cpu_reason_before_decoding_them(tmp_path, monkeypatch):
    paths = [
        _photo(tmp_path / "a.jpg", 1),
        _thin(tmp_path / "thin.jpg"),
        _thin(tmp_path / "thin-exif.jpg", (2, 400), orientation=6),
        _thin(tmp_path / "thin.png"),
        _photo(tmp_path / "b.png", 2),
    ]
    decoded = _counting_decoder(monkeypatch)
    raw = _batch([(p, 0) for p in paths])
    pipe = GpuPipeline(SPEC, "cpu")
    out = pipe(raw)
    assert out.valid.tolist() == [True, False, False, False, True]
    assert dict(out.bad) == {k: _cpu_reason(paths[k]) for k in (1, 2, 3)}
    assert all(reason.startswith(TOO_ELONGATED) for _, reason in out.bad)
    assert decoded == [raw.blob(0).numel()]  # the thin JPEGs were refused from their headers
    want = Normalize(SPEC.mean, SPEC.std)(eval_transform(SPEC)(decode_image(paths[4]))[None])
    assert (out.images[4] - want[0]).abs().max() <= 1.0 / (255 * min(SPEC.std)) + 1e-5


def test_m1_gpu_feed_refuses_a_thin_decoded_image_before_the_eval_resize(tmp_path, monkeypatch):
    """A header that passes but a decode that comes out 2 x 20000 (a stand-in decoder): skipped with the
    bound's reason, never handed to the resize; its neighbours are resized as usual."""
    paths = [_photo(tmp_path / f"{k}.jpg", k) for k in range(3)]
    monkeypatch.setattr(
        gpu_data,
        "decode_on_device",
        lambda blobs, device, streams=None: [
            torch.zeros(3, 2, 20000, dtype=torch.uint8)
            if k == 1
            else torch.zeros(3, 40, 48, dtype=torch.uint8)
            for k in range(len(blobs))
        ],
    )
    resized: list[tuple[int, ...]] = []
    real = gpu_data.eval_batch

    def recording(images, spec):
        resized.extend(tuple(im.shape) for im in images)
        return real(images, spec)

    monkeypatch.setattr(gpu_data, "eval_batch", recording)
    out = GpuPipeline(SPEC, "cpu")(_batch([(p, 0) for p in paths]))
    assert out.valid.tolist() == [True, False, True]
    assert out.bad == [(1, resize_refusal(2, 20000, SPEC.resize, SPEC.crop))]
    assert resized == [(3, 40, 48), (3, 40, 48)]


def test_m1_gpu_feed_training_without_augmentation_is_bounded_like_eval(tmp_path):
    paths = [_photo(tmp_path / "a.jpg", 1), _thin(tmp_path / "thin.png")]
    out = GpuPipeline(SPEC, "cpu", AugmentSpec(enabled=False))(_batch([(p, 0) for p in paths]), epoch=0)
    assert out.valid.tolist() == [True, False] and out.bad == [(1, _cpu_reason(paths[1]))]


@pytest.mark.parametrize("size", [(20000, 2), (2, 20000)])
def test_m1_gpu_feed_train_augment_takes_a_thin_image_on_a_canvas_bounded_by_the_crop(
    tmp_path, size, monkeypatch
):
    """Random resized crop picks a box inside the image and only shrinks it: nothing grows with a thin
    image, so it is trained on (as core.augment's CPU warp does), not skipped."""
    canvases: list[tuple[int, int]] = []
    real = gpu_augment.resize_crop_many

    def recording(images, plan, out_hw, *args, **kw):
        canvases.append(tuple(out_hw))
        return real(images, plan, out_hw, *args, **kw)

    monkeypatch.setattr(gpu_augment, "resize_crop_many", recording)
    aug = AugmentSpec(rotation=30.0)
    paths = [_photo(tmp_path / "a.jpg", 1, (300, 200)), _thin(tmp_path / "thin.png", size)]
    out = GpuPipeline(SPEC, "cpu", aug, seed=1)(_batch([(p, 0) for p in paths]), epoch=0)
    assert out.valid.all() and out.bad == [] and out.images.shape == (2, 3, 32, 32)
    assert canvases and max(max(hw) for hw in canvases) <= 2 * SPEC.crop
    assert TrainWarp(aug, SPEC)(decode_image(paths[1])).shape == (3, 32, 32)  # the CPU path agrees


def test_m1_gpu_feed_evaluation_warns_once_counting_thin_apart_from_undecodable(
    tmp_path, monkeypatch, capsys
):
    from accelerate import Accelerator

    from train import evaluate as evaluate_module
    from train.data import IGNORE_LABEL

    monkeypatch.setattr(evaluate_module, "_warned", set())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    paths = [
        _photo(tmp_path / "a.jpg", 1),
        _thin(tmp_path / "thin.jpg"),
        str(tmp_path / "broken.jpg"),
        _photo(tmp_path / "b.jpg", 2),
    ]
    reader = EncodedImages([(p, k % 2) for k, p in enumerate(paths)], threads=2)
    loader = torch.utils.data.DataLoader(reader, batch_size=4, collate_fn=collate_encoded)
    pipe = GpuPipeline(SPEC, "cpu", normalize=False)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    acc = Accelerator(cpu=True)
    for _ in range(2):  # two epochs over the same set: one warning
        batches = engine_batches(
            loader, pipe, lambda i: paths[i].rsplit("/", 1)[1], ignore_label=IGNORE_LABEL
        )
        result = evaluate_module.evaluate(acc, model, batches, Normalize(SPEC.mean, SPEC.std))
    assert result.n == 2
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "1 image(s) too elongated to resize and 1 undecodable image(s)" in err


@pytest.mark.gpu
def test_m1_gpu_feed_nvjpeg_decodes_the_rest_and_skips_thin_images_on_cuda(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4000, 2), (9, 9, 9)).save(buf, "JPEG")
    paths = [_photo(tmp_path / "a.jpg", 1), _thin(tmp_path / "thin.jpg"), _photo(tmp_path / "b.jpg", 2)]
    pipe = GpuPipeline(SPEC, "cuda")
    out = pipe(_batch([(p, 0) for p in paths]))
    assert out.images.is_cuda and out.valid.tolist() == [True, False, True]
    assert out.bad == [(1, _cpu_reason(paths[1]))]
    assert pipe.stats.device == 2 and pipe.stats.cpu_total == 0  # nvJPEG really decoded the others
    # and the decoded-shape check on the device: a thin image decoded by nvJPEG is refused before the resize
    thin = gpu_data.decode_on_device([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], "cuda")
    assert thin[0] is not None and thin[0].is_cuda
    images, errors = pipe.augment(_batch([(paths[0], 0)] * 2), [thin[0], thin[0]], {})
    assert images.is_cuda and set(errors) == {0, 1} and errors[0].startswith(TOO_ELONGATED)
