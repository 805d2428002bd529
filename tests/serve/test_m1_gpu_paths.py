"""Issue 19 M1 on serve's device decode path: an image whose shorter-side resize would pass core.images'
bound is an error row worded as on the CPU path, refused from the JPEG header before any decode, and
from the decoded shape before the batched resize. The device path runs on the CPU here (torchvision
decodes JPEG lists there too) or with a stand-in for the decoder; the gpu test runs nvJPEG itself."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from core.images import TOO_ELONGATED
from core.jpeg import resize_refusal, route_jpeg
from core.preprocess import EvalSpec
from serve import decode
from serve.decode import DecodePipeline, cpu_decode, gpu_decode, spec_key
from serve.discover import Item
from tests.serve.helpers import jpeg_bytes, picture

SPEC = EvalSpec(resize=37, crop=32)  # bound: 64 x 32² output pixels, so a 2-pixel-wide image > 96 long
KEY = spec_key(SPEC)


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def _thin(size=(400, 2)) -> Image.Image:
    return Image.new("RGB", size, (200, 30, 90))


def test_m1_gpu_refusal_is_the_cpu_paths_reason_for_the_upright_image():
    stored = _exif_jpeg(_thin((2, 400)), 6)  # 2 wide, 400 tall as stored; 400 x 2 once upright
    route = route_jpeg(stored)
    assert (route.height, route.width, route.upright) == (400, 2, (2, 400))
    reason = resize_refusal(route.height, route.width, *KEY[:2], route.orientation)
    assert reason == cpu_decode(stored, KEY) and reason.startswith(TOO_ELONGATED)
    assert "(400x2:" in reason  # width x height of the upright image, as PIL's size reads
    assert resize_refusal(40, 50, *KEY[:2]) is None
    assert resize_refusal(0, 400, *KEY[:2]) is None  # size unknown from the header: the decode is checked


def test_m1_gpu_refusal_sits_exactly_at_core_images_bound():
    # 2 x 96: 37 x ceil(37*96/2)=1776 = 65712 > 65536 refused; 2 x 95: 37 x 1758 = 65046 kept
    assert resize_refusal(2, 96, *KEY[:2]) is not None
    assert resize_refusal(2, 95, *KEY[:2]) is None
    assert resize_refusal(95, 2, *KEY[:2], orientation=8) is None


def test_m1_gpu_decode_refuses_a_thin_decoded_image_before_the_resize(monkeypatch):
    """Whatever the header said, the decoded shape decides: a 2 x 20000 decode is a reason for its index,
    never part of the resize batch; its neighbours are normal crops; a decoder refusal stays None."""
    shapes = [(3, 40, 50), (3, 2, 20000), None, (3, 20000, 2), (3, 60, 44)]
    monkeypatch.setattr(
        decode,
        "decode_on_device",
        lambda blobs, device, streams=None: [
            None if s is None else torch.full(s, 7, dtype=torch.uint8) for s in shapes
        ],
    )
    resized: list[tuple[int, ...]] = []
    real = decode.resize_crop_batch

    def recording(images, key):
        resized.extend(tuple(im.shape) for im in images)
        return real(images, key)

    monkeypatch.setattr(decode, "resize_crop_batch", recording)
    out = gpu_decode([b"x"] * 5, [1, 1, 1, 6, 6], KEY, torch.device("cpu"))
    assert [type(x).__name__ for x in out] == ["Tensor", "str", "NoneType", "str", "Tensor"]
    assert out[1] == resize_refusal(2, 20000, *KEY[:2]) and out[1].startswith(TOO_ELONGATED)
    assert out[3] == resize_refusal(2, 20000, *KEY[:2])  # orientation 6 turned 20000 x 2 into 2 x 20000
    assert out[0].shape == out[4].shape == (3, 32, 32) and int(out[0].float().mean()) == 7
    assert resized == [(3, 40, 50), (3, 44, 60)]  # the thin ones never reached the resize


def test_m1_gpu_pipeline_gives_a_thin_jpeg_the_cpu_paths_error_row_without_decoding_it(tmp_path, monkeypatch):
    files = {
        "a.jpg": jpeg_bytes(picture(seed=1, size=(60, 44))),
        "thin.jpg": jpeg_bytes(_thin()),
        "thin-exif.jpg": _exif_jpeg(_thin((2, 400)), 6),
        "b.jpg": jpeg_bytes(picture(seed=2, size=(48, 64))),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    _thin().save(tmp_path / "thin.png")
    items = [Item(str(tmp_path / n), n) for n in [*files, "thin.png"]]
    decoded: list[int] = []
    real = decode.decode_on_device

    def counting(blobs, device, streams=None):
        decoded.extend(int(b.numel()) for b in blobs)
        return real(blobs, device, streams=streams)

    monkeypatch.setattr(decode, "decode_on_device", counting)
    with DecodePipeline(SPEC) as cpu, DecodePipeline(SPEC, device="cpu", gpu_decode=True) as device:
        (a,), (b,) = list(cpu.batches(items, 8)), list(device.batches(items, 8))
        assert device.budget.used == 0 and device.budget.parked == 0  # the refused bytes were let go
    assert a.errors == b.errors
    assert [e.startswith(TOO_ELONGATED) for e in b.errors] == [False, True, True, False, True]
    assert sorted(decoded) == sorted(len(files[n]) for n in ("a.jpg", "b.jpg"))  # header refusal: no decode
    assert b.images.shape == (2, 3, 32, 32) and (a.images.float() - b.images.float()).abs().mean() < 1.0
    assert device.stats.device == 2 and device.stats.cpu_total == 1  # the PNG went to the CPU decoder


def test_m1_gpu_pipeline_turns_a_decoded_thin_image_into_an_error_row(tmp_path, monkeypatch):
    """A header that passes but a decode that comes out thin (a stand-in decoder): the row is an error
    with the bound's reason, the rest of the batch is classified, and the budget is empty afterwards."""
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(jpeg_bytes(picture(seed=3, size=(48, 40))))
    thin_at = 1

    def lying(blobs, device, streams=None):
        return [
            torch.zeros(3, 2, 20000, dtype=torch.uint8)
            if k == thin_at
            else torch.zeros(3, 40, 48, dtype=torch.uint8)
            for k in range(len(blobs))
        ]

    monkeypatch.setattr(decode, "decode_on_device", lying)
    items = [Item(str(tmp_path / n), n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    with DecodePipeline(SPEC, device="cpu", gpu_decode=True) as pipe:
        (batch,) = list(pipe.batches(items, 8))
        assert pipe.budget.used == 0 and pipe.budget.parked == 0
    assert batch.errors[0] == batch.errors[2] == ""
    assert batch.errors[1] == resize_refusal(2, 20000, *KEY[:2])
    assert batch.images.shape == (2, 3, 32, 32)
    assert pipe.stats.cpu_total == 0  # not sent to the CPU decoder: its answer would be the same refusal


@pytest.mark.gpu
def test_m1_gpu_nvjpeg_refuses_a_thin_jpeg_and_crops_the_rest_on_the_device(tmp_path):
    device = torch.device("cuda")
    datas = [jpeg_bytes(picture(seed=4, size=(60, 44))), jpeg_bytes(_thin((4000, 2)))]
    out = gpu_decode(datas, [1, 1], KEY, device)  # decodes both on nvJPEG; the shape check refuses one
    assert isinstance(out[0], torch.Tensor) and out[0].is_cuda and out[0].shape == (3, 32, 32)
    assert isinstance(out[1], str) and out[1].startswith(TOO_ELONGATED)
    for name, data in zip(("a.jpg", "thin.jpg"), datas):
        (tmp_path / name).write_bytes(data)
    items = [Item(str(tmp_path / n), n) for n in ("a.jpg", "thin.jpg")]
    with DecodePipeline(SPEC, device="cuda") as pipe:
        (batch,) = list(pipe.batches(items, 8))
    assert pipe.gpu and pipe.stats.device == 1 and pipe.stats.cpu_total == 0  # nvJPEG really decoded it
    assert batch.images.is_cuda and batch.images.shape == (1, 3, 32, 32)
    assert batch.errors[0] == "" and batch.errors[1] == cpu_decode(datas[1], KEY)
