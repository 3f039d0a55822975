"""Stage extract_images (paper section 3.1): quality filter, exact and perceptual dedup -> silver.images.

Input: ``bronze.fetched_images`` rows with ``status = 'ok'`` (one per URL) and ``bronze.image_refs`` (which
documents use which URL). Steps, each writing what it drops to ``silver.image_rejects`` with one reason:

1. quality (one row per URL): ``undecodable`` (Pillow cannot read the header), ``too_small`` (shorter side
   < ``extract_images.min_short_side``), ``aspect_ratio`` (long / short side > ``extract_images.max_aspect_ratio``).
   Sizes are the fetch stage's (read from the bytes with ``udfs.decode``, as displayed); a row without them has
   them read from its bytes here.
2. exact dedup: URLs whose bytes are identical are one image (``image_id`` = hash of the bytes) that keeps every
   URL and document; the extra URL rows are rejected as ``exact_duplicate`` (their references live on). The URL
   that stood for the image in the last run stands again, so a URL added later never takes its place; a new
   image's is its smallest ``url_id`` (whatever order the fetch took).
3. perceptual dedup: 64-bit pHash; images whose hashes differ in at most ``max_distance`` bits are linked,
   candidate pairs come from banding (:mod:`udfs.images`), groups are connected components
   (:mod:`realsyn.components`). The hash is ``udfs.images.phash`` of the bytes: the fetch stage's where it stored
   one (``bronze.fetched_images.phash``, with ``fetch.perceptual_hash`` on), else computed from the bytes here.
   Images whose bytes decode only partially are rejected as ``undecodable``.

Representative of a near-duplicate group: the largest resolution (width * height), then the smallest
``image_id``. The representative takes over the URLs and documents of the whole group, and the other members are
rejected as ``near_duplicate`` with ``duplicate_of`` naming it. Semantic dedup, which needs the embeddings, is a
stage of its own after embed (:mod:`realsyn.stages.semantic_dedup`), with the same rule.

Rows in (fetched URLs) = rows of ``silver.images`` + rows of ``silver.image_rejects``. A reject's key
(``reject_id``) is the ``url_id`` of a URL dropped at quality or exact dedup, the ``image_id`` of an image dropped
by a later step: the same bytes at two URLs are two rejects. The per-step counts go
to ``gold.funnel`` under stage ``extract_images``. Both silver tables are replaced atomically on every run, so a rerun
(or a retry after a crash) gives identical tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.components import (
    COMPONENT,
    REPRESENTATIVE,
    by_resolution,
    choose_representatives,
    connected_components,
    merge_into_representatives,
)
from realsyn.config_sections import Config, ExtractImagesConfig, ImagePerceptualDedupConfig
from realsyn.contracts import (
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    DETAIL,
    REASON,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
)
from realsyn.funnel import FunnelStep, first_reason, format_funnel, split, write_funnel
from realsyn.ids import bytes_id_col
from realsyn.semdedup import prune_embeddings
from realsyn.tables import Lakehouse

log = logging.getLogger(__name__)

STAGE = "extract_images"
PHASH = "phash"
DUPLICATE_OF = "duplicate_of"
STEP = "step"
CONTENT_URL = "content_url"
# The columns of an image before its bytes are joined back: content_url names the URL whose bytes are its bytes.
_IMAGE_META = ("image_id", CONTENT_URL, "width", "height", "format", "url_ids", "doc_ids")
# The URL columns the fetch stage stores for every image it fetched, so that this stage need not read the bytes.
_STORED = ("image_id", "width", "height", "format")


_INFO_TYPE = T.StructType(
    [
        T.StructField("width", T.IntegerType()),
        T.StructField("height", T.IntegerType()),
        T.StructField("format", T.StringType()),
    ]
)


@F.pandas_udf(_INFO_TYPE)  # type: ignore[call-overload]
def _image_info(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
    from udfs.images import image_info_batch

    for contents in batches:
        yield image_info_batch(contents)


@F.pandas_udf(T.LongType())  # type: ignore[call-overload]
def _phash(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
    from udfs.images import phash_batch

    for contents in batches:
        yield phash_batch(contents)


def url_rows(fetched: DataFrame, refs: DataFrame) -> DataFrame:
    """One row per successfully fetched URL with its id, size, format and perceptual hash and its documents, not
    the bytes.

    Columns: url_id, image_id, width, height, format, phash (null where not stored), doc_ids (sorted, distinct;
    empty when no reference names the URL). The fetch stage stores the id (hash of the bytes), the size and format
    as displayed, read with the same ``udfs.decode`` functions as here, and the perceptual hash in every row it
    fetched; those rows are not read past these columns. A row without id, size or format
    (``bronze.fetched_images`` written by another tool or an earlier version) has them read from its bytes; one
    without a hash has it computed by :func:`with_phash` if it passes quality and exact dedup.
    """
    docs = refs.groupBy("url_id").agg(F.array_sort(F.collect_set("doc_id")).alias("doc_ids"))
    ok = fetched.where(F.col("status") == "ok")
    if PHASH not in ok.columns:  # a table written before the fetch stage stored the hash
        ok = ok.withColumn(PHASH, F.lit(None).cast("long"))
    stored = F.lit(True)
    for name in _STORED:
        stored &= F.col(name).isNotNull()
    known = ok.where(stored).select("url_id", *_STORED, PHASH)
    read = (
        ok.where(~stored)
        .select(
            "url_id",
            F.coalesce(F.col("image_id"), bytes_id_col("content")).alias("image_id"),
            _image_info(F.col("content")).alias("_info"),
            PHASH,
        )
        .select("url_id", "image_id", "_info.width", "_info.height", "_info.format", PHASH)
    )
    return (
        known.unionByName(read)
        .join(docs, "url_id", "left")
        .withColumn("doc_ids", F.coalesce(F.col("doc_ids"), F.array().cast("array<string>")))
        .select("url_id", *_STORED, PHASH, "doc_ids")
    )


def with_content(images: DataFrame, fetched: DataFrame) -> DataFrame:
    """``images`` (one row per image, its bytes at ``content_url``) with its bytes in column ``content``.

    The stage's one join with the bytes: ``images`` is the small side (cached by the caller, so that Spark knows its
    size) and is broadcast where it fits, so the fetched bytes are read where they lie and filtered, not shuffled.
    """
    contents = fetched.where(F.col("status") == "ok").select(F.col("url_id").alias(CONTENT_URL), "content")
    return images.join(contents, CONTENT_URL)


def quality_reason(cfg: ExtractImagesConfig) -> Column:
    """The first failed quality check of a row with width/height, or null to keep it."""
    w, h = F.col("width"), F.col("height")
    short, long = F.least(w, h), F.greatest(w, h)
    return first_reason(
        [
            (w.isNull() | h.isNull(), "undecodable"),
            (short < cfg.min_short_side, "too_small"),
            (long > short * F.lit(cfg.max_aspect_ratio), "aspect_ratio"),
        ]
    )


def quality_detail(cfg: ExtractImagesConfig) -> Column:
    """What the quality check measured on a rejected row: its size, and the side or ratio that failed."""
    w, h = F.col("width"), F.col("height")
    short, long = F.least(w, h), F.greatest(w, h)
    return (
        F.when(
            F.col(REASON) == "too_small", F.format_string(f"%dx%d: short side %d < {cfg.min_short_side}", w, h, short)
        )
        .when(
            F.col(REASON) == "aspect_ratio",
            F.format_string(f"%dx%d: aspect ratio %.2f > {cfg.max_aspect_ratio:g}", w, h, long / short),
        )
        .otherwise(F.lit(None).cast("string"))
    )


def _reject_rows(
    df: DataFrame,
    step: str,
    reason: Column,
    duplicate_of: Column | None = None,
    detail: Column | None = None,
) -> DataFrame:
    """Rows of ``df`` in the shape of silver.image_rejects, dropped at ``step`` for ``reason``: one per URL where
    ``df`` has a ``url_id`` (quality, exact dedup), else one per image."""
    per_url = "url_id" in df.columns
    return df.select(
        F.col("url_id" if per_url else "image_id").alias("reject_id"),
        F.lit(step).alias(STEP),
        reason.alias(REASON),
        (F.lit(None).cast("string") if detail is None else detail).alias(DETAIL),
        "image_id",
        (F.array("url_id") if per_url else F.col("url_ids")).alias("url_ids"),
        "doc_ids",
        "width",
        "height",
        "format",
        (F.lit(None).cast("string") if duplicate_of is None else duplicate_of).alias(DUPLICATE_OF),
    )


def exact_dedup(urls: DataFrame, stood_before: DataFrame | None = None) -> tuple[DataFrame, DataFrame]:
    """(images, rejects): one image per content hash with all its URLs and documents; extra URL rows rejected.

    ``urls``: rows of :func:`url_rows` that passed quality. An image's ``content_url`` is the URL that stands for it.

    The URL that stood for the image in the last run (``stood_before``: a ``url_id`` column, see
    :func:`urls_that_stood`) stands for it again, so URLs added later never displace it; an image new to this run
    takes its smallest url_id, which two runs on the same input choose alike whatever order the fetch took. The
    other URLs are ``exact_duplicate`` rejects.
    """
    if stood_before is not None:
        urls = urls.join(stood_before.select("url_id", F.lit(0).alias("_before")), "url_id", "left")
    else:
        urls = urls.withColumn("_before", F.lit(None).cast("int"))
    groups = urls.groupBy("image_id").agg(
        F.array_sort(F.collect_set("url_id")).alias("url_ids"),
        F.array_sort(F.array_distinct(F.flatten(F.collect_list("doc_ids")))).alias("all_doc_ids"),
        F.min(F.struct(F.coalesce("_before", F.lit(1)), "url_id"))["url_id"].alias("_first_url"),
    )
    joined = urls.drop("_before").join(groups, "image_id")
    images = joined.where(F.col("url_id") == F.col("_first_url")).select(
        "image_id",
        F.col("url_id").alias(CONTENT_URL),
        "width",
        "height",
        "format",
        PHASH,
        "url_ids",
        F.col("all_doc_ids").alias("doc_ids"),
    )
    rejects = _reject_rows(
        joined.where(F.col("url_id") != F.col("_first_url")),
        "exact_dedup",
        F.lit("exact_duplicate"),
        duplicate_of=F.col("image_id"),
    )
    return images, rejects


def urls_that_stood(images: DataFrame, rejects: DataFrame) -> DataFrame:
    """The url_ids that stood for an image when ``images`` / ``rejects`` (silver.images and silver.image_rejects
    of the last run) were written: every URL they name except those rejected as exact duplicates."""
    named = images.select(F.explode("url_ids").alias("url_id")).union(
        rejects.select(F.explode("url_ids").alias("url_id"))
    )
    duplicates = rejects.where(F.col(STEP) == "exact_dedup").select(F.explode("url_ids").alias("url_id"))
    return named.subtract(duplicates)


def phash_pairs(hashes: DataFrame, cfg: ImagePerceptualDedupConfig) -> DataFrame:
    """Pairs ``(src, dst)`` of distinct hashes (src < dst) within ``cfg.max_distance`` bits, found by banding.

    ``hashes`` has one column ``phash`` (long, distinct). Every hash emits its band keys; hashes sharing a key
    are compared exactly; pairs of hashes that share no key are never compared.
    """
    n_bands, t = cfg.bands, cfg.max_distance

    @F.pandas_udf(T.ArrayType(T.LongType()))  # type: ignore[call-overload]
    def keys(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        from udfs.images import band_keys_batch

        for h in batches:
            yield band_keys_batch(h, n_bands, t)

    buckets = (
        hashes.select(PHASH, F.explode(keys(F.col(PHASH))).alias("key"))
        .groupBy("key")
        .agg(F.array_sort(F.collect_set(PHASH)).alias("members"))
        .where(F.size("members") > 1)
    )
    pairs = F.expr(
        "flatten(transform(members, (a, i) -> transform("
        f"filter(slice(members, i + 2, size(members)), b -> bit_count(a ^ b) <= {int(t)}), "
        "b -> named_struct('src', a, 'dst', b))))"
    )
    return buckets.select(F.explode(pairs).alias("p")).select("p.src", "p.dst").distinct()


def _merge_groups(df: DataFrame, step: str, reason: str) -> tuple[DataFrame, DataFrame]:
    """Representatives with the URLs and documents of their whole group, and the other members as rejects.

    ``df`` has the image columns plus ``component`` and ``representative``.
    """
    kept, others = merge_into_representatives(df, "image_id", unions=("url_ids", "doc_ids"))
    rejects = _reject_rows(others, step, F.lit(reason), duplicate_of=F.col(REPRESENTATIVE))
    return kept.select(*_IMAGE_META), rejects


def with_phash(images: DataFrame, fetched: DataFrame) -> DataFrame:
    """``images`` (with a ``phash`` column, null where the fetch stage stored none) with the perceptual hash of
    every image in ``phash``: the stored one, else that of its bytes (read from ``fetched`` at ``content_url``;
    null: the image cannot be fully decoded). Only the bytes of images without a stored hash are read."""
    stored = images.where(F.col(PHASH).isNotNull())
    unhashed = images.where(F.col(PHASH).isNull()).drop(PHASH)
    computed = with_content(unhashed, fetched).withColumn(PHASH, _phash(F.col("content"))).drop("content")
    return stored.unionByName(computed)


def perceptual_dedup(hashed: DataFrame, cfg: ImagePerceptualDedupConfig) -> tuple[DataFrame, DataFrame]:
    """(kept, rejects): one representative per group of perceptual near-duplicates of ``hashed``, images with
    their ``phash`` (:func:`with_phash`; checkpointed by the caller, since the search reads it several times).

    Images that cannot be fully decoded for hashing are rejected as ``undecodable``. Identical hashes are
    collapsed before the search, so many copies of one picture cost one vertex, not a quadratic clique.
    """
    hashed = hashed.withColumn(REASON, F.when(F.col(PHASH).isNull(), F.lit("undecodable")))
    ok, broken = split(hashed)
    broken_rejects = _reject_rows(broken, "perceptual_dedup", F.col(REASON))
    hashes = ok.select(PHASH).distinct()
    pairs = phash_pairs(hashes, cfg).localCheckpoint(eager=True)
    labels = connected_components(pairs, "src", "dst", vertices=hashes)
    grouped = ok.join(labels.withColumnRenamed("id", PHASH), PHASH).drop(PHASH)
    # Checkpointed: both the kept images and the rejects read the groups.
    grouped = choose_representatives(grouped, COMPONENT, "image_id", by_resolution()).localCheckpoint(eager=True)
    kept, dup_rejects = _merge_groups(grouped, "perceptual_dedup", "near_duplicate")
    return kept, broken_rejects.unionByName(dup_rejects)


@dataclass(frozen=True)
class ImagesSummary:
    """Counts of one run of the image extraction stage."""

    steps: list[FunnelStep]

    @property
    def kept(self) -> int:
        """Images written to silver.images."""
        return self.steps[-1].rows_out

    def __str__(self) -> str:
        return format_funnel(self.steps, "image extraction")


@contextmanager
def extract_images(
    fetched: DataFrame, refs: DataFrame, icfg: ExtractImagesConfig, stood: DataFrame | None = None
) -> Iterator[tuple[DataFrame, DataFrame, list[FunnelStep]]]:
    """(images, rejects, funnel steps) of the fetched images (``bronze.fetched_images`` rows) and their references
    (``bronze.image_refs``); ``stood``: the URLs that stood for an image last run (:func:`urls_that_stood`). Write
    the two frames inside the ``with`` block: the kept images' metadata is cached until it ends.

    The bytes are read by the final join of the kept images with their bytes, and before it only for what the
    fetch stage did not store: the perceptual hash of a distinct image (:func:`with_phash`; stored with
    ``fetch.perceptual_hash`` on), the header of a URL (:func:`url_rows`; rows of an earlier version or another
    tool). Every step between works on metadata. The images' side of a join with the bytes is cached, so
    Spark knows its size (about 200 bytes per image) and broadcasts it while it is under
    ``spark.sql.autoBroadcastJoinThreshold`` (10 MB by default, some 50,000 images): the bytes then go through no
    shuffle. Above it, each join shuffles the bytes once; raise the threshold where executors have the memory. Each
    step's survivors are materialised once, so no Python UDF runs twice over a row.
    """
    urls = url_rows(fetched, refs)
    urls = urls.withColumn(REASON, quality_reason(icfg)).localCheckpoint(eager=True)
    passed, bad = split(urls)
    quality_rejects = _reject_rows(bad, "quality", F.col(REASON), detail=quality_detail(icfg))
    images, exact_rejects = exact_dedup(passed, stood)
    images = images.cache()
    n_urls, n_passed, n_images = urls.count(), passed.count(), images.count()
    steps = [FunnelStep("quality", n_urls, n_passed), FunnelStep("exact_dedup", n_passed, n_images)]
    rejects = quality_rejects.unionByName(exact_rejects)

    if icfg.perceptual_dedup.enabled:
        unhashed = images.where(F.col(PHASH).isNull()).count()
        log.info(
            "extract_images: %d of %d images have no stored perceptual hash: hashing their bytes", unhashed, n_images
        )
        hashed = (with_phash(images, fetched) if unhashed else images).localCheckpoint(eager=True)
        images.unpersist()
        kept, near_rejects = perceptual_dedup(hashed, icfg.perceptual_dedup)
        images = kept.cache()
        steps.append(FunnelStep("perceptual_dedup", n_images, images.count()))
        rejects = rejects.unionByName(near_rejects)

    columns = [F.col(f.name).cast(f.dataType).alias(f.name) for f in SILVER_IMAGE_REJECTS.schema]
    try:
        kept = with_content(images.select(*_IMAGE_META), fetched).select(*SILVER_IMAGES.columns)
        yield kept, rejects.select(*columns), steps
    finally:
        images.unpersist()


def run_extract_images(lakehouse: Lakehouse, cfg: Config) -> ImagesSummary:
    """Read the fetched images and their references, write silver.images, silver.image_rejects and the funnel."""
    for name in (BRONZE_FETCHED_IMAGES, BRONZE_IMAGE_REFS):
        if not lakehouse.exists(name):
            raise RuntimeError(f"{name} does not exist: run the stage that writes it first")
    stood = None
    if lakehouse.exists(SILVER_IMAGES) and lakehouse.exists(SILVER_IMAGE_REJECTS):
        stood = urls_that_stood(lakehouse.read(SILVER_IMAGES), lakehouse.read(SILVER_IMAGE_REJECTS))
        stood = stood.localCheckpoint(eager=True)  # read before this stage overwrites both tables
    fetched, refs = lakehouse.read(BRONZE_FETCHED_IMAGES), lakehouse.read(BRONZE_IMAGE_REFS)
    with extract_images(fetched, refs, cfg.extract_images, stood) as (images, rejects, steps):
        lakehouse.overwrite(SILVER_IMAGES, images)
        lakehouse.overwrite(SILVER_IMAGE_REJECTS, rejects)
    write_funnel(lakehouse, STAGE, steps)
    # Embeddings of images no longer extracted go; those of semantic duplicates stay (still in silver.images here).
    prune_embeddings(lakehouse, SILVER_IMAGE_EMBEDDINGS, lakehouse.read(SILVER_IMAGES), "image_id")
    return ImagesSummary(steps)
