"""The one image decoder: header check, pixel limit, EXIF orientation and the validation of candidate images
(decoding to pixels: tests/udfs/test_clip.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.support.photos import encode, photo
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


CHINA = photo("china")  # 640 x 427: large enough to be decoded at 1/8 scale


@pytest.mark.parametrize(("mode", "progressive"), [("RGB", False), ("RGB", True), ("CMYK", False)])
def test_reduced_scale_jpeg_check_still_reads_the_whole_stream(mode: str, progressive: bool) -> None:
    data = encode(CHINA.convert(mode), "JPEG", quality=90, progressive=progressive)
    assert decode.validate_image(data, 50_000_000) == decode.ImageCheck(None, None, 640, 427, "JPEG")
    # Cut in the first half, in the last rows of entropy-coded data, and only the end-of-image marker missing.
    for cut in (len(data) // 3, len(data) - 64, len(data) - 2):
        check = decode.validate_image(data[:cut], 50_000_000)
        assert (check.reason, check.format) == (decode.REASON_UNDECODABLE, "JPEG"), cut
        assert "truncated" in (check.detail or ""), cut


@pytest.mark.parametrize("bits", [8, 16])
def test_truncated_png_is_a_decode_error(bits: int) -> None:
    img = CHINA if bits == 8 else Image.fromarray(np.asarray(CHINA.convert("L"), dtype=np.uint16) * 257)
    data = encode(img, "PNG")
    assert decode.validate_image(data, 50_000_000) == decode.ImageCheck(None, None, 640, 427, "PNG")
    for cut in (len(data) // 2, len(data) - 100):  # both inside the compressed image data
        check = decode.validate_image(data[:cut], 50_000_000)
        assert (check.reason, check.format) == (decode.REASON_UNDECODABLE, "PNG"), cut


def test_images_under_the_pixel_limit_but_huge_decoded_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # 81M pixels pass max_pixels (89.5M), but the decoded PNG would take ~324 MB.
    big = Image.new("RGB", (9000, 9000), (10, 20, 30))
    png, jpeg = encode(big, "PNG"), encode(big, "JPEG")
    check = decode.validate_image(png, 89_478_485)
    assert (check.reason, check.width, check.height, check.format) == (decode.REASON_TOO_MANY_PIXELS, 9000, 9000, "PNG")
    assert "324 MB > 134 MB" in (check.detail or "")
    # A JPEG is checked at 1/8 scale (~5 MB) and passes; a higher bound lets the PNG through too.
    assert decode.validate_image(jpeg, 89_478_485) == decode.ImageCheck(None, None, 9000, 9000, "JPEG")
    assert decode.validate_image(png, 89_478_485, max_decoded_bytes=400_000_000).reason is None
    # A refused image's size is as displayed, as an accepted one's is: EXIF orientation 6 turns 9000x4000 upright.
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = 6
    turned = encode(Image.new("RGB", (9000, 4000), (10, 20, 30)), "PNG", exif=exif)  # type: ignore[arg-type]
    check = decode.validate_image(turned, 89_478_485, max_decoded_bytes=100_000_000)
    assert (check.reason, check.width, check.height) == (decode.REASON_TOO_MANY_PIXELS, 4000, 9000)
    # The refusal decodes nothing (the header check too: Pillow's PNG EXIF lookup would decode the whole image).
    from PIL import PngImagePlugin

    def no_decode(self: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    assert decode.validate_image(png, 89_478_485).reason == decode.REASON_TOO_MANY_PIXELS
