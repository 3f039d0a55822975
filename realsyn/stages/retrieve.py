"""Top-k sentences per image as a join over leaf ids of the sentence k-means tree.

Each image descends the tree, looking at the leaves of its ``coarse_probe`` nearest coarse clusters, and probes
``probe_leaves`` leaves on average: with ``probe_spread`` s > 1, those whose centroid lies within a cosine margin
of its nearest one, at least ``probe_leaves / s`` and at most ``probe_leaves * s`` of them, the margin set on a
sample of the images so that the average is ``probe_leaves``. Images near a leaf's centre probe few leaves and
images between many probe more, which finds more of the exact top-k at the same cost (docs/benchmarks.md).
Images and sentences then meet on leaf id in a cogroup; inside each group one matrix product scores every image
against every sentence exactly, and each image keeps its ``top_k`` best there. A window over the image finally
merges the lists of its leaves into the global top-k.

A leaf with more than ``max_group_sentences`` sentences (or more than ``max_group_images`` probing images) is
split into hash chunks of about that size, and every image chunk meets every sentence chunk of the leaf, so no
task receives a huge group while the result stays exact over the probed leaves (images are counted per leaf
from the probes of a hash sample of about ``PLAN_SAMPLE_IMAGES`` images, all of them below that, so the descent
of every image runs once). A leaf with fewer than k sentences contributes what it has; an image whose probed
leaves hold fewer than k sentences in all gets fewer than k rows. Ties in score go to the smaller sentence id.

``run_retrieve`` reads ``silver.image_embeddings``, ``silver.sentence_embeddings``, ``silver.sentence_centroids`` and
``silver.sentence_clusters`` and replaces the rows of one model id in ``silver.retrieval`` (image_id,
model_id, rank (1 = best), sentence_id, score, leaf_id); image embeddings that are null, of another length than
the tree's, not finite or all zero go to ``silver.retrieval_rejects`` with a reason each instead.

With ``retrieve.device`` "auto" or "cuda" each task descends the tree and scores its groups on the GPU Spark
assigned to it (udfs.tree's torch path; the tree crosses to each GPU once per Python worker); "cpu" is numpy. A
GPU rounds its products differently from a CPU, so run the stage on one kind: where the plan's tasks and the
join's ran on different kinds, an image at a near-tie may probe a leaf that no image probed in the plan, and its
sentences there are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from realsyn.config_sections import Config, RetrieveConfig
from realsyn.contracts import (
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_RETRIEVAL_REJECTS,
    SILVER_SENTENCE_CENTROIDS,
    SILVER_SENTENCE_CLUSTERS,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCES,
    Table,
)
from realsyn.funnel import FunnelStep, Models, write_funnel
from realsyn.tables import Lakehouse
from realsyn.tree import shipped, tree_from_centroids
from realsyn.vectors import hash_uniform, resolve_model_id, usable_embeddings
from realsyn.workers import array_device
from udfs.models import DevicePolicy
from udfs.tree import Prefilter, Tree, calibrate_margin, descend, probe_counts, top_k_prefiltered
from udfs.vectors import arrow_matrix, matrix_column

# The config key of the device policy, named when "cuda" finds no GPU.
DEVICE_KEY = "retrieve.device"

# An embedding in the axes of a retrieval prefilter (udfs.tree.Prefilter).
LOW_FIELD = T.StructField("embedding_low", T.ArrayType(T.FloatType(), containsNull=False), False)


@dataclass(frozen=True)
class Probing:
    """Which leaves an image probes: of its ``hi`` nearest (found under its ``coarse_probe`` nearest coarse
    clusters), those whose centroid lies within ``margin`` (cosine) of its nearest one, but at least ``lo``."""

    lo: int
    hi: int
    coarse_probe: int
    margin: float = 0.0


def _ranked_leaves(
    images: DataFrame, load: Callable[[], Tree], dim: int, probing: Probing, embedding_col: str, device: DevicePolicy
) -> DataFrame:
    """Each image's ``probing.hi`` nearest leaves and their centroid similarities, best first (-1 / -inf pad)."""
    schema = T.StructType(
        [
            T.StructField("leaves", T.ArrayType(T.LongType(), False), False),
            T.StructField("scores", T.ArrayType(T.FloatType(), False), False),
        ]
    )

    def rank(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        on = array_device(device, DEVICE_KEY)
        for batch in batches:
            x = arrow_matrix(batch.column(embedding_col), dim)
            leaves, scores, _ = descend(x, load(), probing.hi, probing.coarse_probe, device=on)
            yield pa.RecordBatch.from_arrays(
                [matrix_column(leaves, np.int64).combine_chunks(), matrix_column(scores).combine_chunks()],
                names=["leaves", "scores"],
            )

    return images.select(embedding_col).mapInArrow(rank, schema)


def image_leaves(
    images: DataFrame,
    load: Callable[[], Tree],
    dim: int,
    probing: Probing,
    id_col: str = "image_id",
    embedding_col: str = "embedding",
    prefilter: Prefilter | None = None,
    device: DevicePolicy = "cpu",
) -> DataFrame:
    """One row per (image, probed leaf): ``images`` columns id and embedding, plus ``leaf_id`` (and with a
    ``prefilter``, the image in its axes as ``embedding_low``, projected once per image, not once per leaf).

    ``load`` returns the tree of ``dim``-wide leaves inside the tasks (``realsyn.tree.shipped``); ``device``
    is the policy of ``retrieve.device``.
    """
    fields = [images.schema[id_col], images.schema[embedding_col], T.StructField("leaf_id", T.LongType(), False)]
    if prefilter is not None:
        fields.append(LOW_FIELD)

    def probe(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        on = array_device(device, DEVICE_KEY)
        for batch in batches:
            x = arrow_matrix(batch.column(embedding_col), dim)
            leaves, scores, _ = descend(x, load(), probing.hi, probing.coarse_probe, device=on)
            counts = probe_counts(scores, probing.margin, probing.lo, probing.hi)
            rows, cols = np.nonzero(np.arange(leaves.shape[1]) < counts[:, None])
            out = batch.take(pa.array(rows)).append_column("leaf_id", pa.array(leaves[rows, cols], pa.int64()))
            if prefilter is not None:
                out = out.append_column(LOW_FIELD.name, matrix_column(prefilter.queries_low(x)[rows]))
            yield out

    return images.select(id_col, embedding_col).mapInArrow(probe, T.StructType(fields))


def with_low(sentences: DataFrame, prefilter: Prefilter, dim: int, embedding_col: str = "embedding") -> DataFrame:
    """``sentences`` plus ``embedding_low``: each sentence in the prefilter's axes, projected once."""
    schema = T.StructType([*sentences.schema.fields, LOW_FIELD])

    def project(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            low = prefilter.keys_low(arrow_matrix(batch.column(embedding_col), dim))
            yield batch.append_column(LOW_FIELD.name, matrix_column(low))

    return sentences.mapInArrow(project, schema)


# Images whose probes are counted to plan the chunks of each leaf; above this, a hash sample of about this many.
PLAN_SAMPLE_IMAGES = 50_000
_PLAN_MARGIN = 1.25  # sampled counts are scaled up by this much, so sampling noise rarely overfills a chunk


def _plan(
    images: DataFrame,
    sentences: DataFrame,
    load: Callable[[], Tree],
    dim: int,
    cfg: RetrieveConfig,
    image_col: str,
    embedding_col: str,
) -> tuple[Probing, list[tuple[int, int, int]], ProbeStats]:
    """How images probe, and (leaf_id, image chunks, sentence chunks) for every leaf with sentences they probe.

    Both come from the ranked leaves of at most about ``PLAN_SAMPLE_IMAGES`` images (a hash sample; all images
    below that), so the descent of every image runs once, in the join, and not a second time to plan it: the
    probe margin is the one that gives the sample ``cfg.probe_leaves`` leaves per image on average
    (``udfs.tree.calibrate_margin``), and images are counted per leaf from the sample's probes (scaled up with
    a margin). Sentences are counted per leaf exactly. A sample cannot show that no image probes a leaf, so with
    one every leaf with sentences is planned (at least one image chunk).
    """
    n_images = images.count()
    fraction = min(1.0, PLAN_SAMPLE_IMAGES / max(n_images, 1))
    sample = images if fraction >= 1.0 else images.filter(hash_uniform(image_col, 0) < fraction)
    scale = 1.0 if fraction >= 1.0 else _PLAN_MARGIN / fraction
    lo, hi = cfg.probe_bounds
    ranked = _ranked_leaves(sample, load, dim, Probing(lo, hi, cfg.coarse_probe), embedding_col, cfg.device)
    ranked = ranked.toArrow()
    leaves, scores = arrow_matrix(ranked.column("leaves"), hi, np.int64), arrow_matrix(ranked.column("scores"), hi)
    probing = Probing(lo, hi, cfg.coarse_probe, calibrate_margin(scores, cfg.probe_leaves, lo, hi))
    counts = probe_counts(scores, probing.margin, lo, hi)
    stats = ProbeStats(float(counts.mean()) if counts.size else 0.0, int(counts.size), n_images)
    probed = leaves[np.arange(hi) < counts[:, None]]
    image_counts = np.bincount(probed) if probed.size else np.zeros(0, np.int64)
    plan = []
    for r in sentences.groupBy("leaf_id").count().collect():
        leaf = int(r["leaf_id"])
        seen = int(image_counts[leaf]) if leaf < image_counts.size else 0
        if fraction < 1.0 or seen:
            plan.append(
                (
                    leaf,
                    max(1, math.ceil(seen * scale / cfg.max_group_images)),
                    math.ceil(int(r["count"]) / cfg.max_group_sentences),
                )
            )
    return probing, sorted(plan), stats


@dataclass(frozen=True)
class ProbeStats:
    """Leaves probed per image, measured on the ``over`` images the plan looked at (all ``of`` of them up to
    ``PLAN_SAMPLE_IMAGES``, a hash sample above)."""

    mean: float
    over: int
    of: int


def retrieve(
    images: DataFrame,
    sentences: DataFrame,
    tree: Tree,
    cfg: RetrieveConfig,
    image_col: str = "image_id",
    sentence_col: str = "sentence_id",
    embedding_col: str = "embedding",
) -> tuple[DataFrame, ProbeStats]:
    """Top ``cfg.top_k`` sentences per image: (image, rank, sentence, score, leaf_id), rank 1 = best; and how many
    leaves the images probe on average (measured while planning).

    ``images`` has (image_col, embedding); ``sentences`` has (sentence_col, embedding, leaf_id) with leaves of
    ``tree``. Both sides hold unit-norm embeddings of one model. With ``cfg.prefilter_dim`` > 0 each leaf group
    pre-scores its sentences in that many principal axes of the leaf centroids and scores each image's
    ``cfg.shortlist`` best exactly (udfs.tree.Prefilter); scores are exact cosines either way.
    """
    spark = images.sparkSession
    k = cfg.top_k
    dim = tree.leaves.shape[1]
    prefilter = Prefilter.of(tree, cfg.prefilter_dim, cfg.shortlist)
    load = shipped(spark, tree)  # once: the plan's sample and the join probe the same shipped tree
    sentences = sentences.select(sentence_col, embedding_col, "leaf_id")
    probing, chunks, stats = _plan(images, sentences, load, dim, cfg, image_col, embedding_col)
    plan = F.broadcast(spark.createDataFrame(chunks, "leaf_id long, image_chunks long, sentence_chunks long"))
    probes = image_leaves(images, load, dim, probing, image_col, embedding_col, prefilter, cfg.device)
    low = [LOW_FIELD.name] if prefilter is not None else []
    if prefilter is not None:
        sentences = with_low(sentences, prefilter, dim, embedding_col)
    keys = ["leaf_id", "image_chunk", "sentence_chunk"]
    image_side = (
        probes.join(plan, "leaf_id")
        .withColumn("image_chunk", F.pmod(F.xxhash64(image_col), F.col("image_chunks")))
        .withColumn("sentence_chunk", F.explode(F.sequence(F.lit(0).cast("long"), F.col("sentence_chunks") - 1)))
        .select(*keys, image_col, embedding_col, *low)
    )
    sentence_side = (
        sentences.join(plan, "leaf_id")
        .withColumn("sentence_chunk", F.pmod(F.xxhash64(sentence_col), F.col("sentence_chunks")))
        .withColumn("image_chunk", F.explode(F.sequence(F.lit(0).cast("long"), F.col("image_chunks") - 1)))
        .select(*keys, sentence_col, embedding_col, *low)
    )
    candidate_schema = T.StructType(
        [
            T.StructField(image_col, T.StringType(), False),
            T.StructField(sentence_col, T.StringType(), False),
            T.StructField("score", T.FloatType(), False),
            T.StructField("leaf_id", T.LongType(), False),
        ]
    )
    empty = pa.Table.from_pylist([], schema=to_arrow_schema(candidate_schema))

    def score_group(imgs: pa.Table, sents: pa.Table) -> pa.Table:
        if imgs.num_rows == 0 or sents.num_rows == 0:
            return empty
        sents = sents.take(pc.sort_indices(sents, sort_keys=[(sentence_col, "ascending")]))
        x, y = arrow_matrix(imgs.column(embedding_col), dim), arrow_matrix(sents.column(embedding_col), dim)
        x_low = y_low = None
        if prefilter is not None:
            x_low = arrow_matrix(imgs.column(LOW_FIELD.name), prefilter.dim)
            y_low = arrow_matrix(sents.column(LOW_FIELD.name), prefilter.dim)
        idx, scores = top_k_prefiltered(x, y, k, prefilter, x_low, y_low, device=array_device(cfg.device, DEVICE_KEY))
        width = idx.shape[1]
        return pa.table(
            {
                image_col: imgs.column(image_col).take(pa.array(np.repeat(np.arange(imgs.num_rows), width))),
                sentence_col: sents.column(sentence_col).take(pa.array(idx.ravel())),
                "score": pa.array(scores.ravel(), pa.float32()),
                "leaf_id": pa.array(np.full(imgs.num_rows * width, imgs.column("leaf_id")[0].as_py()), pa.int64()),
            },
            schema=empty.schema,
        )

    candidates = (
        image_side.groupBy(*keys).cogroup(sentence_side.groupBy(*keys)).applyInArrow(score_group, candidate_schema)
    )
    order = Window.partitionBy(image_col).orderBy(F.col("score").desc(), F.col(sentence_col).asc())
    ranked = (
        candidates.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= k)
        .select(image_col, "rank", sentence_col, "score", "leaf_id")
    )
    return ranked, stats


@dataclass(frozen=True)
class RetrievalSummary:
    """What ``run_retrieve`` did."""

    model_id: str | None
    images: int
    sentences: int
    rows: int
    top_k: int = 0
    probes: ProbeStats | None = None  # leaves probed per image, measured
    leaves: int = 0  # leaves of the sentence tree
    rejected: int = 0  # image embeddings that could not be used (silver.retrieval_rejects)
    note: str = ""  # why nothing was retrieved, when nothing was

    def __str__(self) -> str:
        if self.note:
            return f"retrieve: {self.note}"
        lines = []
        if self.rejected:
            lines.append(
                f"retrieve: model {self.model_id}: {self.rejected} image embeddings unusable, "
                f"see {SILVER_RETRIEVAL_REJECTS}"
            )
        probed = ""
        if self.probes is not None:
            sampled = "" if self.probes.over == self.probes.of else f", measured on {self.probes.over:,} of them"
            leaves = f"{self.leaves:,} lea{'ves' if self.leaves != 1 else 'f'}"
            probed = f"; {self.probes.mean:.2f} of {leaves} probed per image on average{sampled}"
        lines.append(
            f"retrieve: model {self.model_id}: {self.images:,} images got {self.rows:,} sentences "
            f"(top {self.top_k} of {self.sentences:,}{probed})"
        )
        return "\n".join(lines)


def run_retrieve(lakehouse: Lakehouse, cfg: Config) -> RetrievalSummary:
    """Retrieve the top-k sentences of every image of one model and replace that model's rows of silver.retrieval.

    Only images of ``silver.images`` and sentences of ``silver.sentences`` take part (when those tables exist):
    a dedup that ran after embedding removed the others from the dataset. Missing input tables or an empty tree
    write nothing and return zero counts.
    """
    needed = [SILVER_IMAGE_EMBEDDINGS, SILVER_SENTENCE_EMBEDDINGS, SILVER_SENTENCE_CENTROIDS, SILVER_SENTENCE_CLUSTERS]
    missing = [name for name in needed if not lakehouse.exists(name)]
    if missing:
        return RetrievalSummary(
            None, 0, 0, 0, note=f"{', '.join(map(str, missing))} not there yet; nothing to retrieve"
        )
    image_embeddings = lakehouse.read(SILVER_IMAGE_EMBEDDINGS)
    model_id = resolve_model_id(image_embeddings, cfg.retrieve.embedding_model, "retrieve.embedding_model")
    if model_id is None:
        return RetrievalSummary(None, 0, 0, 0, note=f"{SILVER_IMAGE_EMBEDDINGS} is empty; nothing to retrieve")
    tree = tree_from_centroids(lakehouse.read(SILVER_SENTENCE_CENTROIDS), model_id)
    if tree.n_leaves == 0:
        note = f"no sentence clusters for model {model_id}; run cluster_sentences first"
        return RetrievalSummary(model_id, 0, 0, 0, note=note)
    images = _still_kept(
        lakehouse, image_embeddings.filter(F.col("model_id") == model_id).select("image_id", "embedding"), SILVER_IMAGES
    )
    images, rejected = usable_embeddings(
        lakehouse, images, SILVER_RETRIEVAL_REJECTS, "image_id", model_id, int(tree.leaves.shape[1])
    )
    n_usable = images.count()
    sentences = _still_kept(
        lakehouse,
        lakehouse.read(SILVER_SENTENCE_CLUSTERS)
        .filter(F.col("model_id") == model_id)
        .join(
            lakehouse.read(SILVER_SENTENCE_EMBEDDINGS).filter(F.col("model_id") == model_id),
            ["sentence_id", "model_id"],
        )
        .select("sentence_id", "embedding", "leaf_id"),
        SILVER_SENTENCES,
    )
    result, probes = retrieve(images, sentences, tree, cfg.retrieve)
    result = result.select("image_id", F.lit(model_id).alias("model_id"), "rank", "sentence_id", "score", "leaf_id")
    lakehouse.replace_partition(SILVER_RETRIEVAL, result, "model_id", model_id)
    written = lakehouse.read(SILVER_RETRIEVAL).filter(F.col("model_id") == model_id)
    totals = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("image_id").alias("images")).first()
    n_rows, n_images = (int(totals["rows"]), int(totals["images"])) if totals is not None else (0, 0)
    n_sentences = sentences.count()
    steps = [
        FunnelStep("usable_embedding", n_usable + rejected, n_usable),
        FunnelStep("retrieve", n_usable, n_images),  # images that got at least one sentence
    ]
    write_funnel(lakehouse, "retrieve", steps, Models(model_id=model_id))
    return RetrievalSummary(
        model_id, n_images, n_sentences, n_rows, cfg.retrieve.top_k, probes, tree.n_leaves, rejected
    )


def _still_kept(lakehouse: Lakehouse, rows: DataFrame, kept: Table) -> DataFrame:
    """``rows`` whose id is in the extraction table ``kept`` (all of them while that table does not exist)."""
    if not lakehouse.exists(kept):
        return rows
    key = "image_id" if kept == SILVER_IMAGES else "sentence_id"
    return rows.join(lakehouse.read(kept).select(key), key, "left_semi")
