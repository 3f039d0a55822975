"""Pure image functions on real photographs shipped with scikit-image and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from tests.support.photos import crop, encode, photo
from udfs.decode import EXIF_ORIENTATION
from udfs.images import (
    band_keys,
    band_layout,
    band_radius,
    hamming,
    image_info,
    image_info_batch,
    phash,
    phash_batch,
)

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"]


def test_image_info_reads_header_and_survives_garbage() -> None:
    png = encode(Image.new("RGB", (321, 123)))
    jpg = encode(Image.new("RGB", (40, 500)), "JPEG")
    assert image_info(png) == (321, 123, "png")
    assert image_info(jpg) == (40, 500, "jpeg")
    assert image_info(b"<html>not an image</html>") == (None, None, None)
    assert image_info(None) == (None, None, None)
    assert image_info(png, max_pixels=1000) == (None, None, None)
    got = image_info_batch(pd.Series([png, b"", jpg]))
    assert got.astype(object).where(got.notna(), None).values.tolist() == [
        [321, 123, "png"],
        [None, None, None],
        [40, 500, "jpeg"],
    ]


def test_phash_groups_edited_copies_of_real_photographs_and_separates_distinct_ones() -> None:
    originals = {n: phash(encode(photo(n))) for n in PHOTOS}
    for name in PHOTOS:
        im = photo(name)
        copies = {
            "half size": encode(im.resize((im.width // 2, im.height // 2))),
            "jpeg q=30": encode(im, "JPEG", quality=30),
            "2% crop": encode(crop(im, 0.02)),
            "recoloured": encode(ImageEnhance.Color(im).enhance(0.8)),
            "brighter": encode(ImageEnhance.Brightness(im).enhance(1.1), "JPEG", quality=60),
        }
        for edit, content in copies.items():
            d = int(hamming(originals[name], phash(content)))
            assert d <= 8, f"{name} {edit}: {d} bits"
    for a, b in itertools.combinations(PHOTOS, 2):
        assert int(hamming(originals[a], originals[b])) > 20, (a, b)


# The transpose that shows a stored image as its EXIF orientation says it is displayed.
_DISPLAYED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_an_exif_rotated_jpeg_is_measured_and_hashed_as_displayed(orientation: int) -> None:
    stored = photo("chelsea").resize((320, 160))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    rotated = encode(stored, "JPEG", exif=exif, quality=95)  # type: ignore[arg-type]
    displayed = stored.transpose(_DISPLAYED[orientation])
    assert image_info(rotated) == (*displayed.size, "jpeg")
    assert displayed.size == ((320, 160) if orientation == 3 else (160, 320))
    for twin in (encode(displayed, "JPEG", quality=95), encode(displayed)):
        assert int(hamming(phash(rotated), phash(twin))) <= 2


def _with_transparency(im: Image.Image) -> tuple[Image.Image, Image.Image]:
    """``im`` with its left quarter transparent (black beneath, as editors save it), and the same on white."""
    rgba = np.array(im.convert("RGBA"))
    rgba[:, : rgba.shape[1] // 4] = 0
    on_white = np.array(im)
    on_white[:, : on_white.shape[1] // 4] = 255
    return Image.fromarray(rgba), Image.fromarray(on_white)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_phash_merges_the_same_photograph_as_png_and_as_jpeg(name: str) -> None:
    im = photo(name)
    grey = np.array(im.convert("L"))
    transparent, on_white = _with_transparency(im)
    pairs = {
        "rgb png": (encode(im), encode(im, "JPEG", quality=95)),
        "palette png": (encode(im.quantize(256)), encode(im, "JPEG", quality=95)),
        "grey png": (encode(Image.fromarray(grey)), encode(Image.fromarray(grey), "JPEG", quality=95)),
        "16-bit grey png": (encode(Image.fromarray(grey.astype(np.uint16) * 257)), encode(Image.fromarray(grey))),
        "rgba png": (encode(transparent), encode(on_white, "JPEG", quality=95)),
        "palette png with transparency": (encode(transparent.quantize(255)), encode(on_white, "JPEG", quality=95)),
    }
    for variant, (png, jpg) in pairs.items():
        d = int(hamming(phash(png), phash(jpg)))
        assert d <= 2, f"{name} {variant}: {d} bits"


def test_phash_of_broken_bytes_is_null() -> None:
    jpg = encode(photo("coffee"), "JPEG", quality=90)
    got = phash_batch(pd.Series([jpg[: len(jpg) // 2], b"garbage", None, jpg]))
    assert got.isna().tolist() == [True, True, True, False]
    assert got.dtype == "Int64"


def test_hamming_on_known_values() -> None:
    assert hamming(np.int64(0), np.int64(-1)).tolist() == 64
    assert hamming([0b1011, 5], [0b0001, 5]).tolist() == [2, 0]


def test_band_layout_covers_64_bits() -> None:
    assert band_layout(3) == [(42, 22), (21, 21), (0, 21)]
    assert band_layout(1) == [(0, 64)]
    assert band_radius(8, 3) == 1 and band_radius(5, 3) == 1 and band_radius(2, 3) == 0 and band_radius(12, 3) == 2
    with pytest.raises(ValueError):
        band_layout(0)


@pytest.mark.parametrize(("max_distance", "n_bands"), [(8, 3), (5, 2), (3, 4), (12, 4)])
def test_band_keys_find_every_pair_within_the_distance(max_distance: int, n_bands: int) -> None:
    rng = np.random.default_rng(max_distance * 10 + n_bands)
    base = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=200, dtype=np.int64)
    # Partners at exactly max_distance bits (the hardest case) and far-away random hashes.
    flips = np.array(
        [sum(1 << int(b) for b in rng.choice(64, max_distance, replace=False)) for _ in base], dtype=np.uint64
    )
    near = (base.view(np.uint64) ^ flips).view(np.int64)
    assert (hamming(base, near) == max_distance).all()
    kb, kn = band_keys(base, n_bands, max_distance), band_keys(near, n_bands, max_distance)
    shared = [bool(set(a.tolist()) & set(b.tolist())) for a, b in zip(kb, kn, strict=True)]
    assert all(shared)
    # With the default layout (22/21/21-bit bands, 1 flip), random pairs almost never share a key: the chance is
    # about 3 * 23 * 22 / 2**21 per pair, which is what keeps the search near-linear.
    if (max_distance, n_bands) == (8, 3):
        far = rng.permutation(near)
        kf = band_keys(far, n_bands, max_distance)
        assert sum(bool(set(a.tolist()) & set(b.tolist())) for a, b in zip(kb, kf, strict=True)) <= 2
