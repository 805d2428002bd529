"""The robust decoder: every odd-but-valid image becomes upright 8-bit RGB; every broken one a BadImage."""

import io

import numpy as np
import pytest
from PIL import Image

from core.images import BadImage, decode_image, is_image_file


def _rgb(w=40, h=30):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    img = decode_image(p)
    assert img.mode == "RGB" and img.size == (20, 10)
    r, g, b = img.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


def test_grayscale_becomes_three_equal_channels(tmp_path):
    p = tmp_path / "g.png"
    Image.new("L", (8, 8), 77).save(p)
    assert decode_image(p).getpixel((0, 0)) == (77, 77, 77)


def test_alpha_is_composited_on_white(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(p)  # fully transparent red
    assert decode_image(p).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_is_composited(tmp_path):
    p = tmp_path / "p.png"
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    img.info["transparency"] = 0
    img.save(p, transparency=0)
    assert decode_image(p).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    p = tmp_path / "d.png"
    arr = np.full((6, 6), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(p)
    img = decode_image(p)
    assert img.getpixel((1, 1)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (0, 0, 0)


def test_exif_rotated_photo_equals_its_upright_copy(tmp_path):
    upright = _rgb(40, 30)
    # Store the pixels rotated and tag orientation 6 (rotate 90° CW on display) so a viewer shows `upright`.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "r.png"
    stored.save(p, exif=exif)
    out = decode_image(p)
    assert out.size == upright.size
    assert np.array_equal(np.asarray(out), np.asarray(upright))


def test_truncated_jpeg_is_a_bad_image(tmp_path):
    buf = io.BytesIO()
    _rgb(200, 200).save(buf, "JPEG")
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(BadImage, match="truncated|corrupt"):
        decode_image(p)


def test_zero_byte_and_text_files_are_bad_images(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.jpg").write_text("hello, not an image")
    with pytest.raises(BadImage, match="empty"):
        decode_image(tmp_path / "z.jpg")
    with pytest.raises(BadImage, match="not an image"):
        decode_image(tmp_path / "t.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(p)  # 400 Mpx, a few KB on disk
    with pytest.raises(BadImage, match="too large|bomb"):
        decode_image(p)


def test_bytes_decode_like_files(tmp_path):
    p = tmp_path / "x.png"
    _rgb().save(p)
    assert np.array_equal(np.asarray(decode_image(p.read_bytes())), np.asarray(decode_image(p)))


def test_image_extension_filter_is_case_insensitive_and_skips_hidden():
    assert is_image_file("a/B.JPG") and is_image_file("x.TiFF") and is_image_file("y.webp")
    assert (
        not is_image_file(".DS_Store") and not is_image_file("a/.hidden.jpg") and not is_image_file("n.txt")
    )
