"""JPEG draft decoding (SM_VISION_JPEG_DRAFT): large photos decode at a reduced DCT scale
that still leaves at least twice the model's resize size; other formats are untouched."""

import io

from PIL import Image

from container import ServeConfig
from serve import codec
from vision import images


def encoded(size, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, fmt)
    return buffer.getvalue()


def test_draft_picks_the_smallest_scale_that_keeps_the_minimum_side():
    photo = encoded((4000, 3000), "JPEG")
    assert images.load_rgb(photo, images.ImageLimits()).size == (4000, 3000)
    assert images.load_rgb(photo, images.ImageLimits(draft_min_side=512)).size == (1000, 750)  # 1/4: 750 >= 512
    assert images.load_rgb(photo, images.ImageLimits(draft_min_side=800)).size == (2000, 1500)  # 1/8 would be 375


def test_draft_leaves_small_jpegs_and_other_formats_alone():
    assert images.load_rgb(encoded((640, 427), "JPEG"), images.ImageLimits(draft_min_side=512)).size == (640, 427)
    assert images.load_rgb(encoded((4000, 3000), "PNG"), images.ImageLimits(draft_min_side=512)).size == (4000, 3000)


def test_serving_limits_switch_draft_on_only_when_asked():
    assert codec.DecodeLimits.from_config(ServeConfig(), draft_min_side=584).image.draft_min_side == 0
    assert codec.DecodeLimits.from_config(ServeConfig(jpeg_draft=True), draft_min_side=584).image.draft_min_side == 584
