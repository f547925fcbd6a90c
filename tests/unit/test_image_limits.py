"""vision.images' bounds that are checked before any pixel is decoded (issue 22): the
format allow-list, JPEG scan counting and the decode-bytes budget, and the 16-bit
conversion that no longer costs 8-byte temporaries per pixel."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tests.support import bombs
from tests.support.payloads import image_bytes
from vision import images

LIMITS = images.ImageLimits()


def photo(size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"])
def test_the_allowed_formats_decode(fmt):
    rgb = images.load_rgb(image_bytes(photo(), fmt), LIMITS)
    assert rgb.mode == "RGB" and rgb.size == (96, 64)


@pytest.mark.parametrize("fmt, name", [("ICO", "ICO"), ("ICNS", "ICNS"), ("PDF", "PDF"), ("JPEG2000", "JPEG 2000"), ("EPS", "EPS")])
def test_other_formats_are_refused_by_name_before_decoding(fmt, name):
    try:
        data = image_bytes(photo((64, 64)), fmt)
    except (OSError, KeyError) as err:  # a Pillow built without that writer
        pytest.fail(f"cannot write {fmt} here: {err}")
    with pytest.raises(images.ImageUnsupported, match=f"{name} images are not accepted"):
        images.load_rgb(data, LIMITS)


def test_a_format_outside_the_allow_list_is_never_opened(monkeypatch):
    """TGA has no magic number: it is simply unreadable, and Pillow's TGA plugin is never asked."""
    from PIL import TgaImagePlugin

    def opened(*args, **kwargs):
        raise AssertionError("the TGA plugin was used")

    monkeypatch.setattr(TgaImagePlugin.TgaImageFile, "_open", opened)
    with pytest.raises(images.ImageUnreadable, match="not a JPEG, PNG, WebP, GIF, BMP, TIFF or PPM image"):
        images.load_rgb(image_bytes(photo((32, 32)), "TGA"), LIMITS)


def test_the_ico_bomb_costs_nothing():
    """A 20 KB ICO whose directory says 256x256 while its PNG is 13000x13000 (169 MP,
    ~600 MiB and seconds of decoding before the pixel limit could see it)."""
    bomb = bombs.ico_bomb()
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(images.ImageUnsupported, match="ICO images are not accepted"):
        images.load_rgb(bomb, LIMITS)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1 and peak < 8 * 1024 * 1024


def test_jpeg_scans_are_counted_from_the_markers():
    baseline = image_bytes(photo(), "JPEG")
    progressive = image_bytes(photo(), "JPEG", progressive=True)
    assert images.count_jpeg_scans(baseline, 100) == 1
    assert images.count_jpeg_scans(progressive, 100) == 10  # libjpeg's progressive script for colour
    assert images.count_jpeg_scans(bombs.scan_bomb(500), 1000) == 500


def test_bytes_inside_segments_are_not_counted_as_markers():
    """FF DA / FF D9 inside an APP segment (EXIF, a thumbnail) must neither add scans
    nor end the count early (a fake EOI would hide the scans after it)."""
    data = bombs.scan_bomb(300)
    app = b"\xff\xe1" + (2 + 64).to_bytes(2, "big") + (b"\xff\xd9\xff\xda" * 16)
    crafted = data[:2] + app + data[2:]
    assert images.count_jpeg_scans(crafted, 1000) == 300


def test_the_scan_bomb_is_refused_before_decoding(monkeypatch):
    bomb = bombs.scan_bomb(5_000)
    assert len(bomb) < 256 * 1024

    def decoded(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", decoded)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", decoded)
    start = time.perf_counter()
    with pytest.raises(images.ImageTooLarge, match="more than 100 scans"):
        images.load_rgb(bomb, LIMITS)
    assert time.perf_counter() - start < 0.5


def test_the_scan_limit_is_what_bounds_the_cost():
    """Past the limit the same bytes decode, and take time in proportion to the scans:
    the bound is doing the work."""
    small, big = bombs.scan_bomb(50, (512, 512)), bombs.scan_bomb(1_000, (512, 512))
    permissive = images.ImageLimits(max_jpeg_scans=10_000)
    start = time.perf_counter()
    images.load_rgb(small, permissive)
    small_seconds = time.perf_counter() - start
    start = time.perf_counter()
    images.load_rgb(big, permissive)
    assert time.perf_counter() - start > 4 * small_seconds
    with pytest.raises(images.ImageTooLarge):
        images.load_rgb(big, LIMITS)


def test_decode_bytes_count_the_mode(monkeypatch):
    assert images.frame_bytes("L", 100, 10) == 1000
    assert images.frame_bytes("I;16", 100, 10) == 2000
    assert images.frame_bytes("RGB", 100, 10) == 4000  # Pillow pads RGB to 4 bytes
    assert images.frame_bytes("F", 100, 10) == 4000
    budget = images.ImageLimits(max_decode_bytes=2 * 200 * 100 - 1)
    data = bombs.sixteen_bit_png(200, 100)
    with pytest.raises(images.ImageTooLarge, match=r"decoding this 200x100 I;16 image takes 40,000 bytes"):
        images.load_rgb(data, budget)
    assert images.load_rgb(bombs.blank_png(200, 100, bit_depth=8), budget).size == (200, 100)  # 1 byte per pixel fits


def test_a_progressive_jpeg_pays_for_its_coefficient_buffer():
    """libjpeg keeps every DCT coefficient of a multi-scan JPEG: 2 bytes per sample."""
    picture = photo((256, 256))
    baseline, progressive = image_bytes(picture, "JPEG"), image_bytes(picture, "JPEG", progressive=True, subsampling=0)
    budget = images.ImageLimits(max_decode_bytes=256 * 256 * 4 + 1000)  # the RGB frame fits, not 3 x 2 bytes more
    assert images.load_rgb(baseline, budget).size == (256, 256)
    with pytest.raises(images.ImageTooLarge, match="10-scan JPEG"):
        images.load_rgb(progressive, budget)
    assert images.load_rgb(progressive, images.ImageLimits(max_decode_bytes=256 * 256 * (4 + 6))).size == (256, 256)


def test_the_default_budget_is_a_40_megapixel_rgb_image():
    assert LIMITS.max_decode_bytes == LIMITS.max_pixels * 4


def test_a_16_bit_image_at_the_limit_costs_no_temporaries(tmp_path):
    """The 16 -> 8 bit scaling used int64 and float64 copies (8 bytes a pixel each, 2.4x
    an RGB image at the limit); now it runs a band of rows through a lookup table."""
    width, height = 2000, 1500  # 3 MP
    data = bombs.sixteen_bit_png(width, height)
    tracemalloc.start()
    rgb = images.load_rgb(data, LIMITS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rgb.size == (width, height)
    # Traced (Python and numpy) allocations: the 8-bit result, one band and the file's
    # chunks, ~3 bytes a pixel; the int64/float64 conversion traced 24 bytes a pixel.
    assert peak < width * height * 4, peak
    values = np.asarray(rgb)[..., 0]
    expected = np.rint(np.asarray(Image.open(io.BytesIO(data))).astype(np.float64) * 255 / 65535)
    assert np.array_equal(values, expected.astype(np.uint8))


def test_probe_checks_the_header_only(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(bombs.blank_png(300, 200, bit_depth=8))
    info = images.probe(path, LIMITS)
    assert (info.format, info.width, info.height, info.mode, info.decode_bytes) == ("PNG", 300, 200, "L", 60_000)
    (tmp_path / "x.ico").write_bytes(bombs.ico_bomb(64))
    with pytest.raises(images.ImageUnsupported):
        images.probe(tmp_path / "x.ico", LIMITS)


def test_paths_and_files_count_scans_too(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bombs.scan_bomb(300))
    with pytest.raises(images.ImageTooLarge, match="scans"):
        images.load_rgb(path, LIMITS)
    with open(path, "rb") as file, pytest.raises(images.ImageTooLarge, match="scans"):
        images.load_rgb(file, LIMITS)


def test_exif_orientation_still_turns_the_image():
    picture = photo((40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    rgb = images.load_rgb(image_bytes(picture, "JPEG", exif=exif), LIMITS)
    assert rgb.size == (20, 40)
