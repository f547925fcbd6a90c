"""Image decoding safety (vision.images, used by serve.codec and train.data alike):
size and aspect-ratio limits before allocation, 16-bit and float scaling, EXIF
orientation; and the same pixels for training and serving."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from container import ServeConfig
from serve import codec, errors
from tests.support.bombs import npy_header
from tests.support.payloads import image_bytes as encoded
from tests.support.payloads import npy_bytes as npy
from train import check_data, data
from train.formats import imagefolder
from vision import images
from vision.presets import eval_transform

PRE = eval_transform(32, 36)
LIMITS = codec.DecodeLimits.from_config(ServeConfig(max_batch_items=4), draft_min_side=0)  # the served pixel and aspect caps


THIN = encoded(Image.new("1", (16000, 1)))  # ~100 bytes; Resize(36) of the short side: 36 x 576000


@pytest.mark.parametrize(
    "body, ctype",
    [
        (THIN, "image/png"),
        (encoded(Image.new("1", (1, 40_000))), "image/png"),
        (encoded(Image.new("1", (40_000_000, 1))), "image/png"),  # at the pixel limit: was a 500
        (json.dumps({"image": base64.b64encode(THIN).decode()}).encode(), "application/json"),
        (json.dumps([{"b64": base64.b64encode(THIN).decode()}]).encode(), "application/json"),
        (b'{"image": "' + base64.b64encode(THIN) + b'"}\n', "application/jsonlines"),
        (npy(np.zeros((1, 5000, 3), np.uint8)), "application/x-npy"),
        (npy(np.zeros((2, 3000, 2, 3), np.uint8)), "application/x-npy"),
    ],
    ids=["png", "tall-png", "40M-wide-png", "json-b64", "json-list", "jsonlines", "npy-hwc", "npy-batch"],
)
def test_extreme_aspect_ratio_is_refused_before_resizing(body, ctype):
    with pytest.raises(errors.PayloadTooLarge, match="aspect ratio .* above the limit of 20:1"):
        codec.decode(body, ctype, PRE, LIMITS)


def test_aspect_ratio_limit_is_a_setting():
    wide = encoded(Image.new("RGB", (300, 10)))
    with pytest.raises(errors.PayloadTooLarge):
        codec.decode(wide, "image/png", PRE, LIMITS)
    relaxed = codec.DecodeLimits.from_config(ServeConfig(max_aspect_ratio=40), draft_min_side=0)
    assert codec.decode(wide, "image/png", PRE, relaxed).inputs.shape == (1, 3, 32, 32)


def test_geometry_is_checked_from_the_header():
    header_only = THIN[:-20]  # header intact, pixel data cut short: refused for its size, not as corrupt
    with pytest.raises(images.ImageTooLarge):
        images.load_rgb(header_only, images.ImageLimits())


def gradient16() -> np.ndarray:
    return (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    values = gradient16()
    rgb = np.asarray(images.load_rgb(encoded(Image.fromarray(values)), images.ImageLimits()))
    expected = np.rint(values / 257.0)
    assert rgb.shape == (64, 64, 3) and np.abs(rgb[..., 0] - expected).max() <= 1
    assert rgb.mean() == pytest.approx(127.5, abs=1.5)  # Pillow's convert gives ~254 (all white)


def test_float_tiff_in_unit_range_is_scaled():
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    rgb = np.asarray(images.load_rgb(encoded(Image.fromarray(values), "TIFF"), images.ImageLimits()))
    assert rgb.mean() == pytest.approx(127.5, abs=1.5)  # Pillow's convert gives 0 (all black)


@pytest.mark.parametrize("values", [np.full((8, 8), 7.5, np.float32), np.full((8, 8), np.nan, np.float32)])
def test_float_tiff_out_of_range_is_refused_clearly(values):
    body = encoded(Image.fromarray(values), "TIFF")
    with pytest.raises(errors.Unprocessable, match=r"\[0, 1\]"):
        codec.decode(body, "image/tiff", PRE, LIMITS)


def oriented_jpeg() -> bytes:
    """40x20 stored pixels, left half red; EXIF Orientation 6: display rotated 90
    degrees clockwise, so the upright image is 20x40 with red on top."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied():
    upright = images.load_rgb(oriented_jpeg(), images.ImageLimits())
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_malformed_exif_does_not_break_decoding():
    image = Image.new("RGB", (8, 8))
    exif = Image.Exif()
    exif[0x0112] = 99  # no such orientation
    assert images.load_rgb(encoded(image, "JPEG", exif=exif.tobytes()), images.ImageLimits()).size == (8, 8)


@pytest.mark.parametrize("body", [oriented_jpeg(), encoded(Image.fromarray(gradient16()))], ids=["exif-jpeg", "png16"])
def test_training_and_serving_see_the_same_pixels(tmp_path, body):
    path = tmp_path / "cls" / "img.png"
    path.parent.mkdir()
    path.write_bytes(body)
    trained, _ = data.ImageSamples([(str(path), 0)], PRE)[0]
    served = codec.decode(body, "image/png", PRE, LIMITS).inputs[0]
    assert torch.equal(trained, served)


def test_training_check_reports_extreme_aspect_ratios(tmp_path):
    """The decoder's header limits are the training check's too: such an image is reported
    unreadable before training, not met mid-epoch."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "ok.png").write_bytes(encoded(Image.new("RGB", (10, 10))))
    (tmp_path / "a" / "thin.png").write_bytes(THIN)
    report = check_data.check({"train": imagefolder.read(tmp_path)}, min_side=1)
    assert report.splits["train"].unreadable_keys == {"a/thin.png"}
    assert "aspect ratio" in report.splits["train"].unreadable.examples[0]["reason"]


def test_pixel_limit_names_the_limit():
    with pytest.raises(errors.PayloadTooLarge, match="limit of 1000 pixels"):
        codec.decode(
            encoded(Image.new("RGB", (40, 30))), "image/png", PRE, dataclasses.replace(LIMITS, image=images.ImageLimits(max_pixels=1000))
        )


@pytest.mark.parametrize("shape, descr", [((2**20, 2**20, 3), "|u1"), ((7000,), "<f4"), ((1, 2), "|O")])
def test_npy_header_must_fit_the_body(shape, descr):
    """numpy allocates what the header declares before reading: a 100-byte body
    claiming 3 TiB was a MemoryError (500)."""
    with pytest.raises(errors.BadInput, match="header declares"):
        codec.decode(npy_header(shape, descr) + b"x" * 100, "application/x-npy", PRE, LIMITS)


def test_deeply_nested_json_is_400():
    with pytest.raises(errors.BadInput, match="nested too deeply"):
        codec.decode(b"[" * 50_000, "application/json", PRE, LIMITS)
