"""core.jpeg: the header router on real files, bisection of failed batched decodes, counted fallbacks,
and (on CUDA) nvJPEG parity with the CPU decoder and the stream protocol under load."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import core.jpeg as jpeg
from core.images import decode_image
from core.jpeg import DecodeStats, bisect_decode, decode_files, decode_on_device, route_jpeg
from core.streams import decode_stream, normal_device
from tests.fake_streams import FakeStreams, fake_decoder


def noise(h: int = 50, w: int = 70, seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).normal(128, 40, (h, w, 3)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def photo(h: int = 96, w: int = 128, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: chroma-rich like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y - seed), np.sin(4 * (x + y))], -1) * 100 + 128
    return Image.fromarray((base + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def reference(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


# ------------------------------------------------------------------------------ the router


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_baseline_colour_jpegs_go_to_the_device_with_their_size(subsampling):
    r = route_jpeg(encode(noise(50, 70), subsampling=subsampling))
    assert r.device and r.reason is None and (r.height, r.width, r.orientation) == (50, 70, 1)


def test_gray_jpegs_go_to_the_device():
    assert route_jpeg(encode(noise().convert("L"))).device


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: encode(noise(), progressive=True), jpeg.PROGRESSIVE),
        (lambda: encode(noise().convert("CMYK")), jpeg.COLOR),
        (lambda: encode(noise())[:-200], jpeg.TRUNCATED),
        (lambda: encode(noise(), "PNG"), jpeg.NOT_JPEG),
        (lambda: b"\xff\xd8\xff", jpeg.NOT_JPEG),
        (lambda: b"", jpeg.NOT_JPEG),
        (lambda: encode(noise())[:40], jpeg.NOT_JPEG),  # cut inside the headers: no frame
    ],
    ids=["progressive", "cmyk", "truncated-scan", "png", "three-bytes", "empty", "truncated-header"],
)
def test_everything_else_goes_to_the_cpu_with_its_reason(make, reason):
    r = route_jpeg(make())
    assert not r.device and r.reason == reason


def test_jpegs_over_the_pixel_cap_go_to_the_cpu(monkeypatch):
    monkeypatch.setattr(jpeg, "DEVICE_MAX_PIXELS", 50 * 70 - 1)
    assert route_jpeg(encode(noise(50, 70))).reason == jpeg.TOO_LARGE
    monkeypatch.setattr(jpeg, "DEVICE_MAX_PIXELS", 50 * 70)
    assert route_jpeg(encode(noise(50, 70))).device


def test_sof_types_other_than_baseline_and_extended_huffman_go_to_the_cpu():
    data = bytearray(encode(noise()))
    sof = data.index(b"\xff\xc0")
    for marker, reason in {
        0xC1: None,
        0xC3: jpeg.NOT_BASELINE,
        0xC9: jpeg.NOT_BASELINE,
        0xCA: jpeg.PROGRESSIVE,
    }.items():
        data[sof + 1] = marker
        assert route_jpeg(bytes(data)).reason == reason
    data[sof + 1] = 0xC0
    data[sof + 4] = 12  # sample precision
    assert route_jpeg(bytes(data)).reason == jpeg.NOT_8BIT


def test_rgb_coded_three_component_jpegs_go_to_the_cpu():
    """libjpeg reads component ids R,G,B (or an Adobe transform 0) as RGB, not YCbCr; nvJPEG may not."""
    data = bytearray(encode(noise(), subsampling=0))
    sof = data.index(b"\xff\xc0")
    for k, cid in enumerate(b"RGB"):
        data[sof + 10 + 3 * k] = cid
    assert route_jpeg(bytes(data)).reason == jpeg.COLOR


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_read_from_app1(orientation):
    r = route_jpeg(encode(noise(), exif=exif_bytes(orientation)))
    assert r.device and r.orientation == orientation


def test_the_router_takes_bytes_memoryviews_and_tensors_alike():
    data = encode(noise(), exif=exif_bytes(6))
    assert route_jpeg(data) == route_jpeg(memoryview(data)) == route_jpeg(as_tensor(data))


# ------------------------------------------------------------------------------ bisection


class FakeDecoder:
    """A batched decoder that, like nvJPEG's, fails the whole call when any file in it is bad."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, blobs: list[torch.Tensor], device=None) -> list[torch.Tensor]:
        self.calls.append(len(blobs))
        if any(int(b[0]) == 0 for b in blobs):
            raise RuntimeError("nvjpegDecodeBatched failed")
        return [b.clone() for b in blobs]


def test_a_failed_batch_is_bisected_down_to_the_bad_files_in_few_calls():
    blobs = [torch.tensor([0 if k in (5, 40) else 1, k], dtype=torch.uint8) for k in range(64)]
    fake = FakeDecoder()
    out = bisect_decode(blobs, fake)
    assert [k for k, img in enumerate(out) if img is None] == [5, 40]
    assert all(torch.equal(out[k], blobs[k]) for k in range(64) if k not in (5, 40))
    assert len(fake.calls) <= 2 * 2 * 6 + 1  # ≈ 2·k·log2(n) + 1, not the 65 calls of a one-by-one retry
    assert max(fake.calls[1:]) == 32  # halves, not singles, after the first failure


def test_a_clean_batch_is_one_call_and_chunks_bound_its_size():
    blobs = [torch.tensor([1, k], dtype=torch.uint8) for k in range(150)]
    fake = FakeDecoder()
    out = decode_on_device(blobs, "cpu", chunk=64, decoder=fake)
    assert fake.calls == [64, 64, 22] and all(torch.equal(a, b) for a, b in zip(out, blobs))


def test_decode_files_sends_refused_jpegs_to_the_cpu_and_counts_why(monkeypatch):
    good, gray = encode(noise(seed=1), subsampling=0), encode(noise().convert("L"))
    refused = encode(noise(seed=2), subsampling=0)
    real = jpeg.torchvision_decoder

    def picky(blobs, device):  # the device decoder refuses one valid file: the CPU must still decode it
        if any(bytes(b.numpy()) == refused for b in blobs):
            raise RuntimeError("refused")
        return real(blobs, device)

    monkeypatch.setattr(
        jpeg,
        "decode_on_device",
        lambda blobs, device: jpeg.bisect_decode(list(blobs), lambda b: picky(b, device)),
    )
    blobs = [as_tensor(d) for d in (good, refused, encode(noise(), progressive=True), gray, b"junk")]
    stats = DecodeStats()
    images, errors = decode_files(blobs, "cpu", stats)
    assert list(errors) == [4] and "not an image" in errors[4]
    assert stats.device == 2 and stats.cpu == {jpeg.REFUSED: 1, jpeg.PROGRESSIVE: 1, jpeg.NOT_JPEG: 1}
    for k in (0, 1, 2):
        assert torch.equal(images[k], reference(bytes(blobs[k].numpy())))
    assert (images[3].int() - reference(gray).int()).abs().max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_files_applies_exif_orientation_like_the_cpu_decoder(orientation):
    data = encode(noise(50, 70), quality=90, subsampling=0, exif=exif_bytes(orientation))
    (img,), errors = decode_files([as_tensor(data)], "cpu")
    assert errors == {} and torch.equal(img, reference(data))


def test_decode_files_honours_the_decompression_bomb_guard():
    images, errors = decode_files([as_tensor(encode(noise(50, 70)))], "cpu", max_pixels=1000)
    assert images == [None] and "too large" in errors[0]


def test_fallbacks_are_reported_once_and_only_when_there_are_any():
    stats, lines = DecodeStats(), []
    stats.add(None, 10)
    stats.report_once(lines.append)
    assert lines == []
    stats.add(jpeg.PROGRESSIVE, 2)
    other = DecodeStats()
    other.add(jpeg.NOT_JPEG)
    stats.merge(other)
    stats.report_once(lines.append)
    stats.report_once(lines.append)
    assert lines == ["image decode: 10 on the device, 3 on the CPU (progressive JPEG: 2, not a JPEG: 1)"]


# ------------------------------------------------------------------------------ on CUDA


def _cuda_decode(datas: list[bytes]) -> tuple[list[torch.Tensor], DecodeStats]:
    stats = DecodeStats()
    images, errors = decode_files([as_tensor(d) for d in datas], "cuda", stats)
    assert errors == {} and all(img.is_cuda for img in images)
    return images, stats


@pytest.mark.gpu
def test_nvjpeg_matches_the_cpu_decoder_on_444_jpegs_and_really_ran():
    datas = [encode(photo(40 + 9 * k, 64, seed=k), quality=90, subsampling=0) for k in range(6)]
    datas.append(encode(photo().convert("L")))
    images, stats = _cuda_decode(datas)
    assert stats.cpu_total == 0 and stats.device == len(datas)  # nvJPEG ran: no silent CPU fallback
    for data, img in zip(datas, images):
        diff = (img.cpu().int() - reference(data).int()).abs()
        # IDCT rounding only. A correct fast-IDCT decoder sits near mean 1.0 (libjpeg-turbo's IFAST IDCT as
        # a proxy: 0.995-1.016 on these images, reviews/sim-2026-12-b/emulate3.py), so 1.5, not 1.0.
        assert diff.float().mean() < 1.5 and diff.max() <= 8


@pytest.mark.gpu
def test_nvjpeg_on_420_jpegs_differs_from_libjpeg_only_by_its_chroma_upsampling():
    """nvJPEG's default upsamples 4:2:0 chroma by nearest neighbour, libjpeg-turbo by "fancy" interpolation."""
    datas = [encode(photo(96, 128, seed=k), quality=90) for k in range(4)]
    images, stats = _cuda_decode(datas)
    assert stats.cpu_total == 0
    for data, img in zip(datas, images):
        assert (img.cpu().int() - reference(data).int()).abs().float().mean() < 8


@pytest.mark.gpu
def test_device_decodes_under_a_busy_consumer_stream_equal_a_synchronous_reference():
    """The stream race of pytorch/vision#9606: decode while the consumer stream is kept busy and the
    previous outputs are freed right away; every image must equal its idle, synchronous decode."""
    datas = [as_tensor(encode(photo(64 + 8 * (k % 5), 96, seed=k), subsampling=0)) for k in range(48)]
    want = [img.cpu() for img in decode_on_device(datas, "cuda")]
    torch.cuda.synchronize()
    a = torch.randn(2048, 2048, device="cuda")
    for _ in range(20):
        for start in range(0, len(datas), 16):
            for _ in range(4):
                a = (a @ a).tanh()  # keep the consumer stream busy while the decode runs
            got = decode_on_device(datas[start : start + 16], "cuda")
            sums = torch.stack([g.long().sum() for g in got])  # queued on the consumer stream
            del got  # freed while the reductions above are still queued
            expect = torch.stack([w.long().sum() for w in want[start : start + 16]])
            assert torch.equal(sums.cpu(), expect)


def test_a_device_decoder_that_fails_even_a_tiny_baseline_jpeg_is_found_unavailable_once(monkeypatch):
    monkeypatch.setattr(jpeg, "_available", {})
    calls = []

    def broken(blobs, device):
        calls.append(len(blobs))
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support")

    assert not jpeg.device_decoder_available("cpu", broken)
    assert not jpeg.device_decoder_available("cpu", broken) and calls == [1]  # asked once per device
    monkeypatch.setattr(jpeg, "_available", {})
    assert jpeg.device_decoder_available("cpu")  # torchvision's CPU decode_jpeg works here


# ------------------------------------------------------------------------------ the stream protocol, on the CPU


def test_decode_runs_on_the_decode_stream_and_hands_its_outputs_to_the_caller():
    streams = FakeStreams()
    decode = fake_decoder(streams)
    blobs = [as_tensor(b"x")] * 3
    images = jpeg._decode_cuda(blobs, torch.device("cuda", 0), decode, streams)
    assert len(images) == 3 and decode.calls == [
        streams.decode_stream
    ]  # the library ran on the decode stream
    assert streams.events("record") == [("record", streams.decode_stream)]
    # the caller's stream waits for the decode stream, then owns the 3 outputs (record_stream)
    assert streams.events("wait") == [("wait", streams.default, streams.decode_stream)]
    assert streams.events("record_stream") == [("record_stream", streams.default, 3)]


def test_decode_refuses_when_the_callers_stream_is_the_decode_stream():
    """The pool alias of issue 15 (a consumer stream equal to the decode stream), injected directly."""
    streams = FakeStreams()
    decode = fake_decoder(streams)
    with streams.use(streams.decode_stream), pytest.raises(RuntimeError, match="decode stream"):
        jpeg._decode_cuda([as_tensor(b"x")], torch.device("cuda", 0), decode, streams)
    assert decode.calls == []  # nothing was decoded


def test_the_device_is_normalised_in_one_place(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert normal_device("cuda") == torch.device("cuda", 3)
    assert normal_device("cuda:1") == torch.device("cuda", 1)
    assert normal_device("cpu") == torch.device("cpu")


def test_the_decoder_probe_and_the_decoder_see_the_same_device(monkeypatch):
    """torchvision recreates (and leaks) its nvJPEG decoder when the device changes: `cuda` vs `cuda:0`."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(jpeg, "_available", {})
    seen = []
    streams = FakeStreams()

    def decoder(blobs, device):
        seen.append(device)
        return [torch.zeros(3, 2, 2, dtype=torch.uint8) for _ in blobs]

    assert jpeg.device_decoder_available("cuda", decoder)
    decode_on_device([as_tensor(b"x")], "cuda", decoder=decoder, streams=streams)
    assert seen == [torch.device("cuda", 0)] * 2
    assert jpeg.device_decoder_available("cuda:0", decoder) and len(seen) == 2  # one probe per device


@pytest.mark.gpu
def test_alias_the_decode_stream_is_outside_the_pool_and_an_injected_alias_is_refused():
    """PyTorch's pool index is a counter mod 32, so drawing many streams does not reliably alias; the
    decode stream must never come back from the pool, and an injected alias must be refused."""
    dev = torch.device("cuda", 0)
    dec = decode_stream("cuda")
    assert dec is decode_stream(dev)  # one per process and device, whatever spelling of the device
    assert all(torch.cuda.Stream(dev) != dec for _ in range(70))  # more than two full turns of the pool
    datas = [as_tensor(encode(photo(seed=1), subsampling=0))]
    with torch.cuda.stream(dec), pytest.raises(RuntimeError, match="decode stream"):
        decode_on_device(datas, dev)
    assert decode_on_device(datas, dev)[0].is_cuda  # from any other stream it decodes
