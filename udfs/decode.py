"""Image bytes to pixels: the one module that opens, bounds, orients and converts images.

Every stage that reads image bytes goes through it: the fetcher's validation (udfs.fetch), the quality and
perceptual-hash steps (udfs.images), the encoders (udfs.clip) and the captioner (udfs.captioner). It owns

- the header check, :func:`read_header`: the header only is parsed (no pixel data read); empty bytes, bytes that
  are no image and more than ``max_pixels`` pixels are refused; :func:`exif_orientation` reads the orientation
  without decoding, :meth:`ImageHeader.displayed` the size as displayed;
- the decode bound, :func:`bound_decode` and :func:`load_bounded`: the decoded pixels stay within
  ``max_decoded_bytes`` (a JPEG over it is decoded at a reduced DCT scale, another format is refused);
- the validation of a candidate image, :func:`validate_image` (the fetcher's check: header, then every byte of the
  image data decoded, JPEGs at 1/8 scale) and its second half :func:`validate_pixels`;
- the conversion, :func:`to_rgb`: EXIF orientation applied, transparency on white, 16-bit scaled to 8;
- :func:`decode_image`, all of these for one image, and the GPU JPEG path behind the same header check
  (:func:`route_jpeg`, :func:`decode_jpegs`: nvJPEG through torchvision).

An image that cannot be used raises :class:`Rejected` with one of the ``REASON_*`` constants below and a
deterministic detail; a caller with a vocabulary of its own (the fetcher's statuses) translates the reason.
Pure functions, no Spark.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

REASON_EMPTY_IMAGE = "empty_image"
REASON_NOT_AN_IMAGE = "not_an_image"  # Pillow does not recognise the bytes as an image (HTML, text, ...)
REASON_UNDECODABLE = "undecodable_image"  # recognised as an image, but it does not decode (truncated, corrupt)
REASON_TOO_MANY_PIXELS = "too_many_pixels"  # over max_pixels (a decompression bomb), or over the decode bound

# Pillow's own decompression-bomb threshold (about a 9,500 x 9,500 image).
DEFAULT_MAX_PIXELS = 89_478_485
# Bytes the decoded pixels of an image may take (a 9,000 x 9,000 RGB PNG is under the pixel limit but ~324 MB):
# larger JPEGs are decoded at a reduced DCT scale, larger images of other formats are refused.
DEFAULT_MAX_DECODED_BYTES = 128 * 1024 * 1024

EXIF_ORIENTATION = 0x0112


class Rejected(Exception):
    """An input that gives no output; ``reason`` is a ``REASON_*`` constant, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_failure(e: Exception) -> Rejected:
    """What an exception raised by Pillow on hostile bytes (anything: OSError, SyntaxError, struct.error...) means:
    too many pixels for its decompression-bomb error, else undecodable; the detail deterministic (no object
    addresses) and short."""
    from PIL import Image

    if isinstance(e, Image.DecompressionBombError):
        return Rejected(REASON_TOO_MANY_PIXELS, str(e)[:300])
    message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
    return Rejected(REASON_UNDECODABLE, f"{type(e).__name__}: {message}"[:300])


# ------------------------------------------------------------------------------------------------- the header


def open_image(data: bytes) -> Image.Image:
    """``data`` opened by Pillow: its header parsed, its pixels not read yet; Pillow's warnings (decompression
    bomb, broken metadata) silenced. Raises what Pillow raises."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(io.BytesIO(data))


@dataclass
class ImageHeader:
    """An image whose header parsed within the pixel limit, not decoded yet (see :func:`read_header`)."""

    image: Any  # PIL.Image.Image, still open on the bytes
    width: int
    height: int
    format: str | None

    @property
    def pixels(self) -> int:
        """Width times height, as stored."""
        return self.width * self.height

    def displayed(self, orientation: int) -> tuple[int, int]:
        """Width and height as displayed under EXIF ``orientation``: swapped where it turns the image (5 to 8)."""
        return (self.height, self.width) if orientation in (5, 6, 7, 8) else (self.width, self.height)


def read_header(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Identify ``data`` from its own bytes and parse its header (cheap: no pixel data is read).

    Raises Rejected for empty bytes, bytes that are no image, a header that does not parse, an empty image and
    more than ``max_pixels`` pixels (the image is then closed).
    """
    from PIL import UnidentifiedImageError

    if not data:
        raise Rejected(REASON_EMPTY_IMAGE)
    try:
        img = open_image(data)
    except UnidentifiedImageError:
        raise Rejected(REASON_NOT_AN_IMAGE, "not a recognised image format") from None
    except Exception as e:
        raise decode_failure(e) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise Rejected(REASON_UNDECODABLE, f"empty image {width}x{height}")
    if width * height > max_pixels:
        img.close()
        raise Rejected(REASON_TOO_MANY_PIXELS, f"{width}x{height} pixels > {max_pixels}")
    return ImageHeader(img, width, height, img.format)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an opened image, read without decoding it; raises on an EXIF block that
    does not parse.

    Pillow's PNG ``getexif()`` decodes the whole image to look for an eXIf chunk after the pixel data (a 9,000 x
    9,000 PNG would be decoded past every bound): for a PNG only an eXIf chunk before the pixel data, already in
    ``img.info``, is read.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1  # a bad value: as stored


def display_orientation(img: Image.Image) -> int:
    """:func:`exif_orientation`, or 1 (as stored) where the EXIF block does not parse: as :func:`to_rgb` shows the
    image (a broken EXIF block leaves the pixels usable)."""
    with contextlib.suppress(Exception):
        return exif_orientation(img)
    return 1


# ------------------------------------------------------------------------------------------------ the decode


def decoded_bytes(img: Any) -> int:
    """Bytes Pillow allocates to decode the (opened, not yet loaded) image ``img`` at its current size: one per
    pixel for 1-band 8-bit modes, two for 16-bit ones, four for every other mode (Pillow keeps RGB in 32 bits)."""
    mode = img.mode
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return int(img.size[0]) * int(img.size[1]) * per_pixel


def bound_decode(img: Any, max_bytes: int, min_side: int = 64) -> str | None:
    """Keep the decode of ``img`` (opened, not loaded) within ``max_bytes``: a JPEG over it is set to decode at
    the largest DCT scale (1/2 .. 1/8) that fits and keeps both sides >= ``min_side``. Returns why the image
    cannot be decoded within the bound (other formats, or a JPEG too large even at 1/8), or None."""
    full = decoded_bytes(img)
    if full <= max_bytes:
        return None
    if img.format == "JPEG":
        width, height = img.size
        for scale in (2, 4, 8):
            if full / (scale * scale) <= max_bytes or scale == 8:
                img.draft(img.mode, (max(min_side, width // scale), max(min_side, height // scale)))
                break
        if decoded_bytes(img) <= max_bytes:
            return None
    return f"decoding {img.size[0]}x{img.size[1]} {img.mode} takes {full / 1e6:,.0f} MB > {max_bytes / 1e6:,.0f} MB"


def load_bounded(img: Any, max_bytes: int, min_side: int = 64) -> None:
    """Decode the pixels of ``img`` (opened, not loaded) within ``max_bytes`` (:func:`bound_decode`); raise
    Rejected (too many pixels) for an image that cannot be decoded within the bound. Pillow's own errors (a
    truncated or corrupt image) are raised as they are (:func:`decode_failure` says what they mean)."""
    too_big = bound_decode(img, max_bytes, min_side)
    if too_big is not None:
        raise Rejected(REASON_TOO_MANY_PIXELS, too_big)
    img.load()


# ------------------------------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class ImageCheck:
    """What validating a candidate image found: ``reason`` None when it decodes whole, else a ``REASON_*`` constant
    and its ``detail``; width and height as displayed (where the header was read) and the format."""

    reason: str | None = None
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


def validate_pixels(header: ImageHeader, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> ImageCheck:
    """Decode the image of ``header`` (then closed) to prove its data whole; width and height as displayed.

    JPEG is decoded at reduced DCT scale, which still reads every byte of the image data. Another image whose
    decoded pixels would take more than ``max_decoded_bytes`` is refused (too many pixels) without decoding.
    """
    img, fmt = header.image, header.format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            orientation = exif_orientation(img)
            if fmt == "JPEG":
                img.draft(None, (max(1, header.width // 8), max(1, header.height // 8)))
            width, height = header.displayed(orientation)
            load_bounded(img, max_decoded_bytes)
        except Rejected as r:  # over the decode bound: the size is known
            return ImageCheck(r.reason, r.detail, width, height, fmt)
        except Exception as e:
            failure = decode_failure(e)
            return ImageCheck(failure.reason, failure.detail, format=fmt)
        finally:
            img.close()
    return ImageCheck(None, None, width, height, fmt)


def validate_image(
    data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
) -> ImageCheck:
    """Check ``data`` with Pillow: refuse non-images, undecodable data and images over ``max_pixels``.

    The pixel limit is checked from the header (:func:`read_header`) before decoding (:func:`validate_pixels`).
    Width and height are as displayed (after the EXIF orientation).
    """
    try:
        header = read_header(data, max_pixels)
    except Rejected as r:
        return ImageCheck(r.reason, r.detail)
    return validate_pixels(header, max_decoded_bytes)


def _flatten_alpha(img: Image.Image) -> Image.Image:
    from PIL import Image

    rgba = img.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_8bit_gray(img: Image.Image) -> Image.Image:
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    elif img.mode != "F" and (img.mode.startswith("I;16") or (arr.size and arr.max() > 255)):
        arr = arr / 257.0  # 16-bit range 0..65535 onto 0..255
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image as it should be seen: EXIF orientation applied, transparency on white, 16-bit scaled."""
    from PIL import ImageOps

    with contextlib.suppress(Exception):  # a broken EXIF block leaves the pixels usable
        img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        img = _to_8bit_gray(img)
    elif mode == "P":
        img = _flatten_alpha(img) if "transparency" in img.info else img.convert("RGB")
    elif mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        img = _flatten_alpha(img)
    if img.mode != "RGB":
        img = img.convert("RGB")  # 1, L, CMYK, YCbCr, HSV (Adobe CMYK JPEGs are un-inverted by the decoder)
    return img


def decode_image(
    data: bytes | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> Image.Image:
    """Decode image bytes to 8-bit RGB (first frame of animations); raise Rejected for anything unusable.

    ``draft_size`` lets the JPEG decoder downscale in the DCT domain to no less than that size (faster, but
    not pixel-identical to a full decode); None decodes at full size. An image whose decoded pixels would take
    more than ``max_decoded_bytes`` is decoded at a reduced scale if a JPEG (still >= 448 px a side, above every
    model's input size), else rejected as too many pixels.
    """

    img = read_header(data, max_pixels).image
    try:
        if draft_size is not None and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        load_bounded(img, max_decoded_bytes, max(draft_size or 0, 448))
        return to_rgb(img)
    except Rejected:
        raise
    except Exception as e:
        raise decode_failure(e) from None


# ------------------------------------------------------------------------------- JPEG decoding on the device


@dataclass
class Jpeg:
    """A JPEG the tensor decoder takes: its bytes as a 1-D uint8 tensor and its EXIF orientation (1 to 8)."""

    data: torch.Tensor
    orientation: int


def route_jpeg(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Jpeg | None:
    """Read the header of ``data``: a ``Jpeg`` for an RGB or grey JPEG within ``max_pixels``, None for anything
    else Pillow decodes (other formats, CMYK). Raises Rejected as :func:`read_header` does."""
    import torch

    img = read_header(data, max_pixels).image
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    assert data is not None  # read_header rejects empty bytes
    return Jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), display_orientation(img))


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (C, H, W) tensor as EXIF ``orientation`` says it should be seen (what ImageOps.exif_transpose does)."""
    import torch

    h, w = -2, -1
    if orientation == 2:
        return pixels.flip(w)
    if orientation == 3:
        return pixels.flip(h, w)
    if orientation == 4:
        return pixels.flip(h)
    if orientation == 5:
        return pixels.transpose(h, w)
    if orientation == 6:
        return torch.rot90(pixels, -1, (h, w))
    if orientation == 7:
        return pixels.transpose(h, w).flip(h, w)
    if orientation == 8:
        return torch.rot90(pixels, 1, (h, w))
    return pixels


@functools.cache
def tensor_decoder_works(device: str) -> bool:
    """Whether torchvision decodes a JPEG on ``device`` in this process (checked once per device): False, with a
    warning, where torchvision was built without its image library or without nvJPEG."""
    import torch
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 10)).save(buf, "JPEG")
    jpeg = route_jpeg(buf.getvalue())
    assert jpeg is not None
    try:
        pixels = decode_jpegs([jpeg], torch.device(device), strict=True)[0]
    except Exception as e:
        log.warning("torchvision cannot decode JPEGs on %s (%s); images are decoded with Pillow", device, e)
        return False
    return pixels is not None and tuple(pixels.shape) == (3, 8, 16)


def decode_jpegs(jpegs: Sequence[Jpeg], device: torch.device, strict: bool = False) -> list[torch.Tensor | None]:
    """Decode JPEGs to oriented (3, H, W) uint8 tensors on ``device`` (nvJPEG on a GPU, in one batch); None for
    each one the decoder refuses (those go through Pillow, which gives the reject reason or the pixels), or the
    decoder's error raised when ``strict``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
        try:
            decoded: list[torch.Tensor | None] = list(
                decode_jpeg([j.data for j in jpegs], mode=ImageReadMode.RGB, device=device)
            )
        except RuntimeError:  # one bad image fails the batch: decode one by one
            if strict:
                raise
            decoded = []
            for j in jpegs:
                try:
                    decoded.append(decode_jpeg(j.data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
    return [None if d is None else orient(d, j.orientation) for d, j in zip(decoded, jpegs, strict=True)]
