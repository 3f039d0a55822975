"""Pure image functions: decode-safe size/format reading, perceptual hashes, band keys for near-duplicate search.

Nothing here knows about Spark; every function takes bytes or pandas / numpy batches and never raises on bad
input (a broken image gives nulls, which the Spark stage turns into a reject reason).

Near-duplicate search by banding (multi-index hashing, Norouzi et al. 2012): a 64-bit hash is cut into
``n_bands`` contiguous bands. If two hashes differ in at most ``t`` bits, then by the pigeonhole principle at
least one band differs in at most ``floor(t / n_bands)`` bits. Each hash emits, per band, the band's value and
every value within ``radius = ceil(floor(t / n_bands) / 2)`` bit flips of it; two hashes within ``t`` bits then
share at least one emitted key (a key halfway between their bands), so grouping by key finds every such pair
(no false negatives) while only hashes that collide on a key are ever compared.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import numpy.typing as npt
import pandas as pd

from udfs.decode import (
    DEFAULT_MAX_DECODED_BYTES,
    Rejected,
    display_orientation,
    load_bounded,
    open_image,
    read_header,
    to_rgb,
)

HASH_BITS = 64
# Band index goes in the bits above the band value in a key, so keys of different bands never collide.
_BAND_SHIFT = 40


def image_info(content: bytes | None, max_pixels: int = 178_956_970) -> tuple[int | None, int | None, str | None]:
    """(width, height, format) read from the image header (udfs.decode.read_header), or (None, None, None) if
    unreadable. Width and height are as displayed: swapped when the EXIF orientation turns the image (5 to 8).

    Only the header is parsed (no pixel decode). Images above ``max_pixels`` (twice Pillow's decompression-bomb
    limit by default, the size at which Pillow itself refuses to open) count as unreadable.
    """
    try:
        header = read_header(content, max_pixels)
    except Rejected:
        return None, None, None
    width, height = header.displayed(display_orientation(header.image))
    header.image.close()
    return int(width), int(height), (header.format.lower() if header.format else None)


def image_info_batch(contents: pd.Series) -> pd.DataFrame:
    """:func:`image_info` of every value of a Series of bytes: columns width, height (Int32), format."""
    rows = [image_info(c) for c in contents]
    return pd.DataFrame(
        {
            "width": pd.array([r[0] for r in rows], dtype="Int32"),
            "height": pd.array([r[1] for r in rows], dtype="Int32"),
            "format": pd.array([r[2] for r in rows], dtype="string"),
        }
    )


def phash(content: bytes | None, hash_size: int = 8, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> int | None:
    """The perceptual hash (imagehash.phash, DCT based) of an image as a signed 64-bit integer, or None.

    The pixels hashed are those of udfs.decode.to_rgb, the image as displayed and as the encoders see it: EXIF
    orientation applied, transparency on white, 16-bit scaled to 8 (a plain ``convert("RGB")`` would clip a
    16-bit PNG to white and show the colours hidden under transparent pixels).

    The ``hash_size`` x ``hash_size`` bits are read row by row, most significant bit first, then stored as
    a two's complement int64 (Spark's long). Images that cannot be fully decoded give None.
    """
    if not content:
        return None
    import imagehash

    if hash_size * hash_size != HASH_BITS:
        raise ValueError(f"hash_size must give {HASH_BITS} bits, got {hash_size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open_image(content) as im:
                load_bounded(im, max_decoded_bytes, 4 * hash_size)
                bits = imagehash.phash(to_rgb(im), hash_size=hash_size).hash.flatten()
    except Exception:
        return None
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return int(np.array([value], dtype=np.uint64).view(np.int64)[0])


def phash_batch(contents: pd.Series) -> pd.Series:
    """:func:`phash` of every value of a Series of bytes, as a nullable Int64 Series."""
    return pd.Series(pd.array([phash(c) for c in contents], dtype="Int64"), index=contents.index)


def hamming(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Bitwise Hamming distance between int64 hashes (element-wise, broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.asarray(np.bitwise_count(x.view(np.uint64)), dtype=np.int64)
    bits = np.unpackbits(np.ascontiguousarray(x.reshape(-1)).view(np.uint8)).reshape(-1, HASH_BITS)
    return bits.sum(axis=1, dtype=np.int64).reshape(x.shape)


def band_layout(n_bands: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(shift, width) of each band, most significant first; widths differ by at most one bit."""
    if not 1 <= n_bands <= bits:
        raise ValueError(f"n_bands must be in [1, {bits}], got {n_bands}")
    widths = [bits // n_bands + (1 if i < bits % n_bands else 0) for i in range(n_bands)]
    layout, top = [], bits
    for w in widths:
        top -= w
        layout.append((top, w))
    return layout


def band_radius(max_distance: int, n_bands: int) -> int:
    """Bit flips emitted per band so that every pair within ``max_distance`` bits shares a key."""
    return (max_distance // n_bands + 1) // 2


def _flip_masks(width: int, radius: int) -> npt.NDArray[np.int64]:
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in combo) for combo in itertools.combinations(range(width), r)]
    return np.array(masks, dtype=np.int64)


def band_keys(hashes: npt.ArrayLike, n_bands: int, max_distance: int) -> npt.NDArray[np.int64]:
    """Keys of each hash for the banded search: an int64 array of shape (n, keys per hash).

    Key = band index << 40 | (band value XOR flip mask), over every band and every flip mask of up to
    :func:`band_radius` bits. Two hashes within ``max_distance`` bits share at least one key.
    """
    h = np.asarray(hashes, dtype=np.int64).reshape(-1).view(np.uint64)
    radius = band_radius(max_distance, n_bands)
    columns = []
    for band, (shift, width) in enumerate(band_layout(n_bands)):
        values = ((h >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        masks = _flip_masks(width, radius)
        columns.append((np.int64(band) << np.int64(_BAND_SHIFT)) | (values[:, None] ^ masks[None, :]))
    if not columns or h.size == 0:
        return np.zeros((h.size, 0 if not columns else sum(c.shape[1] for c in columns)), dtype=np.int64)
    return np.concatenate(columns, axis=1)


def band_keys_batch(hashes: pd.Series, n_bands: int, max_distance: int) -> pd.Series:
    """:func:`band_keys` of a Series of int64 hashes, one list of keys per row."""
    keys = band_keys(hashes.to_numpy(dtype=np.int64), n_bands, max_distance)
    return pd.Series(list(keys), index=hashes.index)
