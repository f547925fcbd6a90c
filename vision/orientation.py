"""Standing a decoded image upright: the EXIF Orientation tag (1-8) says how the stored
pixels must be turned, so a phone photo taken sideways reaches the model as it was seen.

images.load_rgb reads the tag before it converts the frame and turns the RGB result,
so only one frame is ever copied (ImageOps.exif_transpose would turn the original and
also rewrite its EXIF).
"""

from __future__ import annotations

from PIL import Image

ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF Orientation (1, as stored, when absent or malformed)."""
    try:
        return int(image.getexif().get(ORIENTATION_TAG, 1))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """The image turned as orientation says (the image itself for 1 or an unknown value)."""
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)
