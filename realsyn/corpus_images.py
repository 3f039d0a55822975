"""Images for the generated corpus: procedurally drawn pictures (smooth colour fields, gradients, shapes, grain; no
text), every one distinct, with the kinds of images that each of the pipeline's image steps exists to drop.

A photograph is a random low-resolution colour field scaled up (so its low frequencies, which the perceptual hash
reads, are random: two pictures differ in about half of their 64 hash bits), a gradient, a handful of shapes and
film grain cut from noise tiles drawn once per shard, saved as JPEG (or WebP); a graphic is shapes in flat colours
on a plain background, saved as PNG. Photographs land at tens to a few hundred KB, graphics at a few to tens of KB.

Sizes: the shorter side is lognormal around :data:`MEDIAN_SHORT_SIDE` pixels (at least 120, so a normal image
passes the 100-pixel filter with room), the aspect ratio one of the common photo and screen ratios, in landscape
or portrait. Kinds (:data:`KINDS`):

* ``normal``: a new picture that passes the quality filters;
* ``too_small``: icons and thumbnails, shorter side 16 to 99 pixels (``extract_images.min_short_side`` is 100);
* ``aspect_ratio``: banners and skyscrapers, ratio 3.2 to 8 (``max_aspect_ratio`` is 3) with the shorter side at
  least 100 (so the size check does not claim them first);
* ``exact_duplicate``: the bytes of an earlier normal image of the shard under another URL;
* ``near_duplicate``: an earlier normal image saved again as JPEG (graphics also as PNG), resized, or cropped by
  1-2% per side, its pixels within :data:`NEAR_MAX_BITS` of the original's by pHash (the perceptual dedup threshold
  is 8; an edit that moves the hash further is dropped for a plain re-encode), still passing the quality filters;
* ``broken``: bytes that are not an image (an HTML error page) or a JPEG cut short; the fetch refuses both.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

NORMAL = "normal"
TOO_SMALL = "too_small"
ASPECT_RATIO = "aspect_ratio"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
BROKEN = "broken"
KINDS = (NORMAL, TOO_SMALL, ASPECT_RATIO, EXACT_DUPLICATE, NEAR_DUPLICATE, BROKEN)

MEDIAN_SHORT_SIDE = 420
SIGMA_SHORT_SIDE = 0.4
MIN_SHORT_SIDE, MAX_SHORT_SIDE = 120, 1400
# Width : height of web photographs and screenshots (landscape; a quarter of the images are turned to portrait).
RATIOS = ((1.0, 0.15), (4 / 3, 0.3), (3 / 2, 0.25), (16 / 9, 0.2), (2.0, 0.05), (2.4, 0.05))
PORTRAIT_SHARE = 0.25
# Formats of photographs (the rest of the images, graphics, are PNG).
PHOTO_SHARE = 0.8
WEBP_SHARE_OF_PHOTOS = 0.08
# Bits between the pixels of a near duplicate and its original, before encoding (which adds 0-2; dedup takes 8).
NEAR_MAX_BITS = 5
# Duplicates are made from the latest this many to twice as many normal images of the shard (bounds its memory).
RECENT_SOURCES = 256
NOISE_TILE = 1024
# Standard deviations of the grain of photographs, one noise tile each.
GRAIN_SIGMAS = (3.0, 6.0, 9.0, 13.0)
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body><h1>Not Found</h1>"
    b"<p>The requested URL was not found on this server.</p></body></html>\n"
)


@dataclass(frozen=True)
class MadeImage:
    """One image file: its bytes, format (JPEG, PNG, WEBP, or None for bytes that are no image), and size."""

    content: bytes
    format: str | None
    width: int | None
    height: int | None

    @property
    def extension(self) -> str:
        """The file name extension its URL gets (a broken file keeps the extension of what it claims to be)."""
        return EXTENSIONS.get(self.format or "JPEG", "jpg")


def _rough_phash(image: Image.Image) -> Any:
    """imagehash's pHash of ``image`` box-reduced to about 64 pixels on its shorter side first (pHash reads a 32 x 32
    thumbnail anyway; the full-size hash is within a bit or two)."""
    import imagehash

    return imagehash.phash(image.reduce(max(1, min(image.size) // 64)))


class ImageMaker:
    """Makes the images of one shard from ``rng``; remembers the normal images it made, the sources of exact and
    near duplicates."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._grain = [
            Image.fromarray(np.clip(rng.normal(128.0, sigma, (NOISE_TILE, NOISE_TILE, 3)), 0, 255).astype(np.uint8))
            for sigma in GRAIN_SIGMAS
        ]
        self._normal: list[MadeImage] = []  # the latest normal images (a re-upload follows its original closely)

    # -- pixels

    def _size(self) -> tuple[int, int]:
        short = round(MEDIAN_SHORT_SIDE * math.exp(self.rng.normal(0.0, SIGMA_SHORT_SIDE)))
        short = min(MAX_SHORT_SIDE, max(MIN_SHORT_SIDE, short))
        ratios, weights = zip(*RATIOS, strict=True)
        ratio = float(self.rng.choice(ratios, p=np.array(weights) / sum(weights))) * self.rng.uniform(0.97, 1.03)
        long = round(short * ratio)
        return (short, long) if self.rng.random() < PORTRAIT_SHARE else (long, short)

    def _grain_for(self, width: int, height: int) -> Image.Image:
        """Grain of ``width`` x ``height`` (centred on 128) cut from one of the shard's noise tiles."""
        tile = self._grain[int(self.rng.integers(0, len(self._grain)))]
        if width > NOISE_TILE or height > NOISE_TILE:
            return tile.resize((width, height), Image.Resampling.NEAREST)
        x, y = int(self.rng.integers(0, NOISE_TILE - width + 1)), int(self.rng.integers(0, NOISE_TILE - height + 1))
        return tile.crop((x, y, x + width, y + height))

    def picture(self, width: int, height: int, photo: bool) -> Image.Image:
        """A new picture: a photograph (colour field with a gradient, shapes, grain) or a graphic (shapes in flat
        colours on a plain background, as diagrams, logos and clip art are)."""
        rng = self.rng
        if photo:
            rows, cols = int(rng.integers(2, 6)), int(rng.integers(2, 6))
            cells = rng.uniform(0, 255, (rows, cols, 3))
            angle, strength = rng.uniform(0, 2 * math.pi), rng.uniform(20, 70)
            ramp = np.cos(angle) * np.linspace(-1, 1, cols)[None, :] + np.sin(angle) * np.linspace(-1, 1, rows)[:, None]
            cells = np.clip(cells + (strength * ramp)[:, :, None], 0, 255).astype(np.uint8)
            image = Image.fromarray(cells, "RGB").resize((width, height), Image.Resampling.BILINEAR)
        else:
            image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image, "RGBA")
        for _ in range(int(rng.integers(2, 12) if photo else rng.integers(4, 14))):
            x0, x1 = sorted(rng.integers(-width // 4, width + width // 4, 2))
            y0, y1 = sorted(rng.integers(-height // 4, height + height // 4, 2))
            colour = (*(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(90, 256)))
            shape = int(rng.integers(0, 4))
            if shape == 0:
                draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=colour)
            elif shape == 1:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            elif shape == 2:
                points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
                draw.polygon(points, fill=colour)
            else:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, max(3, min(width, height) // 12))))
        if not photo:
            return image
        return ImageChops.add(image, self._grain_for(width, height), scale=1.0, offset=-128)

    def _encode(self, image: Image.Image, fmt: str) -> MadeImage:
        buffer = io.BytesIO()
        if fmt == "JPEG":
            image.save(buffer, "JPEG", quality=int(self.rng.integers(70, 96)))
        elif fmt == "WEBP":
            image.save(buffer, "WEBP", quality=int(self.rng.integers(70, 91)), method=0)
        else:
            image.save(buffer, "PNG")
        return MadeImage(buffer.getvalue(), fmt, image.width, image.height)

    def _new(self, width: int, height: int) -> MadeImage:
        photo = self.rng.random() < PHOTO_SHARE
        fmt = ("WEBP" if self.rng.random() < WEBP_SHARE_OF_PHOTOS else "JPEG") if photo else "PNG"
        return self._encode(self.picture(width, height, photo), fmt)

    # -- kinds

    def normal(self) -> MadeImage:
        """A new picture that passes the quality filters; remembered as a source of duplicates."""
        made = self._new(*self._size())
        self._normal.append(made)
        if len(self._normal) > 2 * RECENT_SOURCES:
            del self._normal[:RECENT_SOURCES]
        return made

    def too_small(self) -> MadeImage:
        """An icon or thumbnail: shorter side under 100 pixels."""
        short = int(self.rng.integers(16, 100))
        long = min(int(short * self.rng.uniform(1.0, 2.0)), 400)
        return self._new(*((short, long) if self.rng.random() < 0.3 else (long, short)))

    def aspect_ratio(self) -> MadeImage:
        """A banner or skyscraper: aspect ratio above 3, shorter side at least 100."""
        short = int(self.rng.integers(100, 300))
        long = round(short * self.rng.uniform(3.2, 8.0))
        return self._new(*((short, long) if self.rng.random() < 0.2 else (long, short)))

    def exact_duplicate(self) -> MadeImage | None:
        """The bytes of an earlier normal image (None before the first)."""
        return self._normal[int(self.rng.integers(0, len(self._normal)))] if self._normal else None

    def near_duplicate(self) -> MadeImage | None:
        """An earlier normal image re-encoded, resized or slightly cropped, its pixels within
        :data:`NEAR_MAX_BITS` of the original's by perceptual hash (None before the first normal image)."""
        source = self.exact_duplicate()
        if source is None:
            return None
        with Image.open(io.BytesIO(source.content)) as opened:
            original = opened.convert("RGB")
        width, height = original.size
        edit = int(self.rng.integers(0, 3))
        image = original
        if edit == 1:
            scale = self.rng.uniform(max(0.5, 110 / min(width, height)), 0.95)
            image = original.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
        elif edit == 2:
            dx, dy = (round(side * self.rng.uniform(0.01, 0.02)) for side in (width, height))
            image = original.crop((dx, dy, width - dx, height - dy))
        if edit and _rough_phash(image) - _rough_phash(original) > NEAR_MAX_BITS:
            image = original
        # Graphics stay PNG when edited; anything else is saved again as a JPEG.
        fmt = "PNG" if source.format == "PNG" and image is not original and self.rng.random() < 0.5 else "JPEG"
        made = self._encode(image, fmt)
        return made if made.content != source.content else self._encode(image, "WEBP")

    def broken(self) -> MadeImage:
        """An HTML error page or a JPEG cut short: bytes the fetch refuses."""
        if self.rng.random() < 0.5:
            return MadeImage(ERROR_PAGE, None, None, None)
        whole = self._encode(self.picture(*self._size(), photo=True), "JPEG")
        cut = int(len(whole.content) * self.rng.uniform(0.3, 0.8))
        return MadeImage(whole.content[:cut], None, None, None)
