"""Images of the generated corpus: distinct pictures at web sizes, and each kind meets or fails the pipeline's image
checks (udfs.images, udfs.decode) as it is meant to."""

from __future__ import annotations

import hashlib

import numpy as np

from realsyn.config_sections import ExtractImagesConfig, ImagePerceptualDedupConfig
from realsyn.corpus_images import ImageMaker
from udfs.decode import validate_image
from udfs.images import hamming, image_info, phash

QUALITY = ExtractImagesConfig()
MAX_DISTANCE = ImagePerceptualDedupConfig().max_distance


def passes_quality(content: bytes) -> bool:
    width, height, _ = image_info(content)
    assert width is not None and height is not None
    short, long = min(width, height), max(width, height)
    return short >= QUALITY.min_short_side and long <= short * QUALITY.max_aspect_ratio


def test_same_seed_same_bytes() -> None:
    a, b, c = (ImageMaker(np.random.default_rng(s)) for s in (1, 1, 2))
    made = [[m.normal() for _ in range(4)] + [m.near_duplicate(), m.too_small(), m.broken()] for m in (a, b, c)]
    contents = [[x.content if x is not None else b"" for x in row] for row in made]
    assert contents[0] == contents[1]
    assert all(x != y for x, y in zip(contents[0][:6], contents[2][:6], strict=True))  # an error page is an error page


def test_normal_pictures_are_distinct_at_web_sizes() -> None:
    maker = ImageMaker(np.random.default_rng(0))
    made = [maker.normal() for _ in range(80)]
    assert all(passes_quality(m.content) and validate_image(m.content).reason is None for m in made)
    hashes = np.array([phash(m.content) for m in made], dtype=np.int64)
    distances = hamming(hashes[:, None], hashes[None, :])[np.triu_indices(len(made), 1)]
    assert distances.min() > MAX_DISTANCE
    sizes = np.array([len(m.content) for m in made])
    assert 15_000 < np.median(sizes) < 300_000 and sizes.max() > 100_000
    assert {m.format for m in made} >= {"JPEG", "PNG"}
    shapes = {(m.width, m.height) for m in made}
    assert len(shapes) > 60
    assert any((w or 0) < (h or 0) for w, h in shapes) and any((w or 0) > (h or 0) for w, h in shapes)


def test_each_kind_meets_or_fails_the_image_checks_as_planted() -> None:
    maker = ImageMaker(np.random.default_rng(4))
    assert maker.exact_duplicate() is None and maker.near_duplicate() is None
    normal = [maker.normal().content for _ in range(10)]
    digests = {hashlib.sha256(c).hexdigest() for c in normal}
    hashes = np.array([phash(c) for c in normal], dtype=np.int64)
    for _ in range(20):
        width, height, _ = image_info(maker.too_small().content)
        assert width is not None and height is not None and min(width, height) < QUALITY.min_short_side
        width, height, _ = image_info(maker.aspect_ratio().content)
        assert width is not None and height is not None
        assert min(width, height) >= QUALITY.min_short_side
        assert max(width, height) > QUALITY.max_aspect_ratio * min(width, height)
        exact = maker.exact_duplicate()
        assert exact is not None and hashlib.sha256(exact.content).hexdigest() in digests
        assert validate_image(maker.broken().content).reason is not None
    for _ in range(25):
        near = maker.near_duplicate()
        assert near is not None and passes_quality(near.content)
        assert hashlib.sha256(near.content).hexdigest() not in digests
        assert hamming(hashes, phash(near.content)).min() <= MAX_DISTANCE
