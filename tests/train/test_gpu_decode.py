"""Batched decode: JPEG headers probed without decoding, pixels equal to core.images.decode_image, bad files reported."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.images import decode_image
from train.gpu_decode import decode_batch, gpu_decodable, probe_jpeg


def noise(h: int = 50, w: int = 70, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).normal(128, 40, (h, w, 3)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def reference(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)


def test_probe_reads_size_components_and_orientation_without_decoding():
    exif = Image.Exif()
    exif[0x0112] = 6
    header = probe_jpeg(encode(noise(50, 70), exif=exif.tobytes()))
    assert (header.height, header.width, header.components, header.orientation) == (50, 70, 3, 6)
    assert probe_jpeg(encode(noise().convert("L"))).components == 1
    assert probe_jpeg(encode(noise().convert("CMYK"))).components == 4
    assert probe_jpeg(encode(noise(), progressive=True)).height == 50
    assert probe_jpeg(encode(noise(), "PNG")) is None
    assert probe_jpeg(b"\xff\xd8\xff") is None


def test_only_rgb_or_gray_jpegs_within_the_pixel_limit_take_the_batched_decoder():
    assert gpu_decodable(probe_jpeg(encode(noise())))
    assert gpu_decodable(probe_jpeg(encode(noise().convert("L"))))
    assert not gpu_decodable(probe_jpeg(encode(noise().convert("CMYK"))))
    assert not gpu_decodable(probe_jpeg(encode(noise(50, 70))), max_pixels=50 * 70 - 1)
    assert not gpu_decodable(None)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_the_cpu_decoder(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(noise(50, 70), quality=90, exif=exif.tobytes())
    (img,), errors = decode_batch([data], "cpu")
    assert errors == {}
    assert torch.equal(img, reference(data))


def test_gray_cmyk_png_and_jpeg_decode_to_the_same_rgb_pixels_as_decode_image():
    blobs = [encode(noise(seed=1)), encode(noise().convert("L")), encode(noise().convert("CMYK")),
             encode(noise(), "PNG"), encode(noise().convert("RGBA"), "PNG")]
    images, errors = decode_batch(blobs, "cpu")
    assert errors == {}
    for data, img in zip(blobs, images):
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        assert torch.equal(img, reference(data))


def test_bad_files_are_reported_with_a_reason_and_the_good_ones_still_decode():
    good = encode(noise())
    blobs = [good, b"", good[: len(good) // 2], b"not an image at all", torch.frombuffer(bytearray(good),
                                                                                         dtype=torch.uint8)]
    images, errors = decode_batch(blobs, "cpu")
    assert sorted(errors) == [1, 2, 3]
    assert "empty" in errors[1] and "truncated" in errors[2] and "not an image" in errors[3]
    assert images[1] is None and images[2] is None and images[3] is None
    assert torch.equal(images[0], reference(good)) and torch.equal(images[4], images[0])


def test_decompression_bomb_guard_is_honoured():
    images, errors = decode_batch([encode(noise(50, 70))], "cpu", max_pixels=1000)
    assert images == [None] and "too large" in errors[0]


@pytest.mark.gpu
def test_nvjpeg_batch_matches_cpu_decode_within_idct_rounding():
    blobs = [encode(noise(40 + 9 * k, 64, seed=k), quality=90) for k in range(6)] + [encode(noise(), "PNG")]
    on_gpu, errors = decode_batch(blobs, "cuda")
    assert errors == {} and all(img.is_cuda for img in on_gpu)
    for data, img in zip(blobs, on_gpu):
        diff = (img.cpu().int() - reference(data).int()).abs()
        assert diff.float().mean() < 1.0 and diff.max() <= 8  # nvJPEG's IDCT differs from libjpeg's slightly
