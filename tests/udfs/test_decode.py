"""The one image decoder: header check, pixel limit and EXIF orientation (decoding itself: tests/udfs/test_clip.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.photos import encode
from udfs import decode


def _picture(size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (None, decode.REASON_EMPTY_IMAGE, ""),
        (b"", decode.REASON_EMPTY_IMAGE, ""),
        (b"<html>not an image</html>", decode.REASON_NOT_AN_IMAGE, "not a recognised image format"),
        (encode(_picture(), "PNG"), decode.REASON_TOO_MANY_PIXELS, "40x30 pixels > 1000"),
    ],
)
def test_the_header_check_names_what_it_found(data: bytes | None, reason: str, detail: str) -> None:
    with pytest.raises(decode.Rejected) as info:
        decode.read_header(data, max_pixels=1000)
    assert (info.value.reason, info.value.detail) == (reason, detail)


def test_a_header_within_the_limit_is_read_without_decoding() -> None:
    header = decode.read_header(encode(_picture(), "JPEG"), max_pixels=1200)
    assert (header.width, header.height, header.format, header.pixels) == (40, 30, "JPEG", 1200)
    assert header.image.tile  # the pixel data is still to be read (Pillow empties the tile list on load)


@pytest.mark.parametrize(("stored", "read"), [(6, 6), (8, 8), (9, 1), (0, 1)])
def test_the_exif_orientation_is_read_and_a_bad_value_counts_as_upright(stored: int, read: int) -> None:
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = stored
    header = decode.read_header(encode(_picture(), "JPEG", exif=exif))  # type: ignore[arg-type]
    assert decode.exif_orientation(header.image) == read


def test_a_png_without_an_exif_chunk_before_its_pixels_is_upright_without_decoding() -> None:
    header = decode.read_header(encode(_picture(), "PNG"))
    assert decode.exif_orientation(header.image) == 1
    assert header.image.tile
