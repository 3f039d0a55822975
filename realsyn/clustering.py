"""Hierarchical spherical k-means in Spark, generic over any (id, embedding) DataFrame.

The coarse level is trained with faiss on a sample collected to the driver (about ``max_points_per_centroid``
rows per centroid, chosen by a hash of the id so the sample does not depend on partitioning); its centroids
travel to the executors inside the UDF closure, which PySpark ships as a broadcast variable once it is large.
A hash sample of the rows (the same share of every coarse cluster: about ``max_points_per_centroid`` rows per
leaf) is given its coarse cluster, and each coarse cluster's fine level is trained in parallel with a grouped
``applyInArrow``, with ``round(n_c / leaf_size)`` fine centroids (n_c estimated from the sample) so that leaves
hold about ``leaf_size`` rows whatever the skew of the coarse clusters. Trained apart, the leaves of each coarse
cluster end at the coarse border whether or not the rows there fit them, which leaves the mean distance to the
leaf centroid well above flat k-means'. ``boundary_passes`` passes over the same sample follow: each row joins
the coarse clusters (among its ``assign_coarse_probe`` nearest) whose best leaf is within ``boundary_margin`` of
its best, and every coarse cluster retrains its leaves in one grouped ``applyInArrow``, a row counting for a leaf
there only while it scores higher than in any other cluster; so rows cross the coarse split where that fits them
better, as in flat k-means. ``refine_steps`` plain Lloyd steps over all rows may follow (every row to its
nearest leaf under its ``assign_coarse_probe`` nearest coarse clusters, every centroid to the normalised mean of
its rows; partial sums per leaf are computed inside each partition and reduced in one shuffle keyed by leaf).
Finally every row goes to its nearest leaf under its ``assign_coarse_probe`` nearest coarse clusters. The UDFs
read embeddings straight from Arrow buffers (no Python object per row). The tree reaches the tasks inside their
closure, or, once its leaves pass ``INLINE_TREE_BYTES``, as a file that every executor memory-maps
(:func:`realsyn.tree.shipped`).

:func:`run_cluster` applies this to one :class:`Subject`, the embeddings of one kind (the stages
``cluster_sentences`` and ``cluster_images``), and writes its centroids table (model_id, level, centroid_id,
parent_id, vector, size) and its clusters table (id, model_id, leaf_id). Level 0 is the coarse level; level 1
holds the leaves, whose ``centroid_id`` is the ``leaf_id`` used everywhere else. Both tables are rewritten for
one model id at a time (an atomic replace of that model's rows); with ``retrain: false`` an
existing tree is kept and only rows without a leaf are assigned. Embeddings that cannot be clustered (null, of
another length than the model's, NaN or infinite values, all zero) are left out, each with a reason in
the subject's rejects table.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.config_sections import ClusterConfig
from realsyn.contracts import TABLES, Table
from realsyn.funnel import FunnelStep, Models, write_funnel
from realsyn.tables import Lakehouse
from realsyn.tree import centroids_frame, shipped, tree_from_centroids
from realsyn.vectors import (
    hash_sample,
    hash_uniform,
    resolve_model_id,
    sorted_matrix,
    usable_embeddings,
    with_label,
    with_nearest,
)
from realsyn.workers import array_device
from udfs.kmeans import local_refined, refined, replace_fine, spherical_kmeans, sums_by_label
from udfs.tree import Tree, boundary_rows, nearest_leaf
from udfs.vectors import arrow_matrix, matrix_column

log = logging.getLogger(__name__)

_FINE_SCHEMA = T.StructType(
    [
        T.StructField("coarse_id", T.LongType(), False),
        T.StructField("local_id", T.LongType(), False),
        T.StructField("vector", T.ArrayType(T.FloatType(), False), False),
    ]
)

_BOUNDARY_SCHEMA = T.StructType(
    [
        T.StructField("coarse_id", T.LongType(), False),
        T.StructField("vectors", T.ArrayType(T.FloatType(), False), False),
        T.StructField("sums", T.ArrayType(T.DoubleType(), False), False),
    ]
)

_SUMS_SCHEMA = T.StructType(
    [
        T.StructField("leaf_id", T.LongType(), False),
        T.StructField("total", T.ArrayType(T.DoubleType(), False), False),
    ]
)


def coarse_cluster_count(n_rows: int, cfg: ClusterConfig) -> int:
    """K1: ``cfg.coarse_clusters`` if set, else about sqrt(number of leaves) so both levels have similar fan-out."""
    if cfg.coarse_clusters > 0:
        return cfg.coarse_clusters
    return max(1, round(math.sqrt(n_rows / cfg.leaf_size)))


def fine_cluster_count(n_rows: int, leaf_size: int) -> int:
    """Leaves under a coarse cluster of ``n_rows`` rows: about one per ``leaf_size`` rows, at least one."""
    return max(1, round(n_rows / leaf_size))


def train_tree(
    df: DataFrame,
    cfg: ClusterConfig,
    id_col: str = "id",
    embedding_col: str = "embedding",
    n_rows: int | None = None,
    section: str = "cluster_sentences",
) -> Tree:
    """Train the two-level tree on ``df`` (one row per id, unit-norm embeddings); an empty ``df`` gives no leaves.

    Only the coarse sample and the centroids reach the driver. ``n_rows`` saves a count when the caller knows it.
    With ``cfg.device`` "auto" or "cuda" the fine levels and boundary passes run on each task's GPU and the coarse
    level on the driver's GPU where it has one (its CPU otherwise, whatever the policy); ``section`` names the
    config section in errors.
    """
    rows = df.select(id_col, embedding_col)
    n = rows.count() if n_rows is None else n_rows
    if n == 0:
        return Tree.from_parts(np.zeros((0, 0), np.float32), [])
    k1 = coarse_cluster_count(n, cfg)
    fraction = min(1.0, k1 * cfg.max_points_per_centroid / n)
    sample = hash_sample(rows, id_col, cfg.seed, fraction)
    dim = len(sample.column(embedding_col)[0])
    kmeans = functools.partial(
        spherical_kmeans,
        niter=cfg.niter,
        max_points_per_centroid=cfg.max_points_per_centroid,
        resampling_steps=cfg.resampling_steps,
        resample_size=cfg.resample_size,
    )
    key = f"{section}.device"
    coarse_device = None if cfg.device == "cpu" else array_device("auto", key)
    coarse = kmeans(sorted_matrix(sample, id_col, embedding_col, dim), k1, seed=cfg.seed, device=coarse_device)
    # Each coarse cluster of n_c rows gets k_c = round(n_c / leaf_size) leaves trained on about
    # max_points_per_centroid rows per leaf: the same share of every cluster, so one pass samples them all and
    # k_c is estimated from the sample (exact when the share is 1).
    share = min(1.0, cfg.max_points_per_centroid / cfg.leaf_size)
    fine_sample = rows.filter(hash_uniform(id_col, cfg.seed + 1) < share) if share < 1 else rows
    sampled = with_nearest(fine_sample, coarse, embedding_col, "coarse_id")

    def train_fine(table: pa.Table) -> pa.Table:
        coarse_id = int(table.column("coarse_id")[0].as_py())
        k = fine_cluster_count(round(table.num_rows / share), cfg.leaf_size)
        x = sorted_matrix(table, id_col, embedding_col, dim)
        centroids = kmeans(x, k, seed=cfg.seed + coarse_id, threads=1, device=array_device(cfg.device, key))
        return pa.table(
            {
                "coarse_id": pa.array(np.full(len(centroids), coarse_id), pa.int64()),
                "local_id": pa.array(np.arange(len(centroids)), pa.int64()),
                "vector": matrix_column(centroids),
            }
        )

    fine_rows = sampled.groupBy("coarse_id").applyInArrow(train_fine, _FINE_SCHEMA).toArrow()
    vectors = arrow_matrix(fine_rows.column("vector"), dim)
    order = np.lexsort((fine_rows.column("local_id").to_numpy(), fine_rows.column("coarse_id").to_numpy()))
    owner, ordered = fine_rows.column("coarse_id").to_numpy()[order], vectors[order]
    fine = [ordered[owner == c] for c in range(coarse.shape[0])]
    tree = Tree.from_parts(coarse, fine)
    for _ in range(cfg.boundary_passes):
        tree = boundary_pass(fine_sample, tree, cfg, id_col, embedding_col, section)
    for _ in range(cfg.refine_steps):
        tree = refine_tree(rows, tree, cfg.assign_coarse_probe, embedding_col)
    return tree


def boundary_pass(
    rows: DataFrame, tree: Tree, cfg: ClusterConfig, id_col: str, embedding_col: str, section: str = "cluster_sentences"
) -> Tree:
    """One boundary pass over ``rows`` (training uses the fine level's sample): the fine level of every coarse
    cluster retrained against its neighbours.

    Each row goes to the coarse cluster of its best leaf and to those of its ``assign_coarse_probe`` nearest
    whose best leaf is within ``boundary_margin`` of that (udfs.tree.boundary_rows: ~1.7x the rows in all),
    with its best score elsewhere. Every coarse cluster then runs up to ``niter`` Lloyd steps on its leaves in
    which a row counts only while it scores higher there (udfs.kmeans.local_refined): the two-level split no
    longer decides which side of a coarse boundary a row's leaf is on, as in flat k-means. One shuffle keyed by
    coarse cluster; only the new leaves reach the driver.
    """
    dim = tree.leaves.shape[1]
    load = shipped(rows.sparkSession, tree)
    schema = T.StructType(
        [
            *rows.select(id_col, embedding_col).schema.fields,
            T.StructField("coarse_id", T.LongType(), False),
            T.StructField("competitor", T.FloatType(), False),
        ]
    )

    def routed(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            x = arrow_matrix(batch.column(embedding_col), dim)
            index, coarse_id, competitor = boundary_rows(x, load(), cfg.assign_coarse_probe, cfg.boundary_margin)
            picked = batch.select([id_col, embedding_col]).take(pa.array(index))
            yield picked.append_column("coarse_id", pa.array(coarse_id, pa.int64())).append_column(
                "competitor", pa.array(competitor, pa.float32())
            )

    def retrain(table: pa.Table) -> pa.Table:
        c = int(table.column("coarse_id")[0].as_py())
        order = pc.sort_indices(table, sort_keys=[(id_col, "ascending")])
        current = load()
        a, b = current.offsets[c], current.offsets[c + 1]
        leaves, _, sums = local_refined(
            arrow_matrix(table.column(embedding_col).take(order), dim),
            current.leaves[a:b],
            table.column("competitor").take(order).to_numpy(),
            cfg.niter,
            device=array_device(cfg.device, f"{section}.device"),
        )
        return pa.table(
            {
                "coarse_id": pa.array([c], pa.int64()),
                "vectors": matrix_column(leaves.reshape(1, -1)),
                "sums": matrix_column(sums.reshape(1, -1), np.float64),
            }
        )

    routed_rows = rows.select(id_col, embedding_col).mapInArrow(routed, schema)
    result = routed_rows.groupBy("coarse_id").applyInArrow(retrain, _BOUNDARY_SCHEMA).toArrow()
    parts = []
    for c, vectors, sums in zip(
        result.column("coarse_id").to_numpy(), result.column("vectors"), result.column("sums"), strict=True
    ):
        flat = vectors.values.to_numpy(zero_copy_only=False)
        parts.append((int(c), flat.reshape(-1, dim), sums.values.to_numpy(zero_copy_only=False).reshape(-1, dim)))
    return replace_fine(tree, parts)


_MAX_PARTIAL_ROWS = 1 << 16


def _summed(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterable[pa.RecordBatch]:
    """Arrow batches of (leaf_id, total) rows: the (leaf ids, float64 sums) ``parts`` added up per leaf.

    Parts are folded together whenever they hold more than ``_MAX_PARTIAL_ROWS`` rows, so memory stays bounded
    by that and the number of distinct leaves seen. Nothing is yielded when ``parts`` is empty.
    """
    ids: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    held = 0

    def fold() -> tuple[np.ndarray, np.ndarray]:
        keys, _, totals = sums_by_label(np.concatenate(sums), np.concatenate(ids))
        return keys, totals

    for part_ids, part_sums in parts:
        ids.append(part_ids)
        sums.append(part_sums)
        held += len(part_ids)
        if held > _MAX_PARTIAL_ROWS:
            keys, totals = fold()
            ids, sums, held = [keys], [totals], len(keys)
    if held == 0:
        return
    keys, totals = fold()
    table = pa.table({"leaf_id": pa.array(keys, pa.int64()), "total": matrix_column(totals, np.float64)})
    yield from table.to_batches()


def refine_tree(rows: DataFrame, tree: Tree, coarse_probe: int, embedding_col: str = "embedding") -> Tree:
    """One distributed spherical Lloyd step over ``rows``: every row to its nearest leaf under its ``coarse_probe``
    nearest coarse clusters, then every centroid to the normalised mean of its rows (udfs.kmeans.refined).

    Each task sums its partition's rows per leaf (one row per leaf it saw); the partial sums meet in one
    shuffle keyed by leaf and only one vector per leaf reaches the driver.
    """
    dim = tree.leaves.shape[1]
    load = shipped(rows.sparkSession, tree)

    def partial_sums(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        def per_batch() -> Iterable[tuple[np.ndarray, np.ndarray]]:
            for batch in batches:
                x = arrow_matrix(batch.column(embedding_col), dim)
                ids, _, sums = sums_by_label(x, nearest_leaf(x, load(), coarse_probe)[0])
                yield ids, sums

        return _summed(per_batch())

    def reduce_sums(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        parts = (
            (b.column("leaf_id").to_numpy(), arrow_matrix(b.column("total"), dim, np.float64))
            for b in batches
            if b.num_rows
        )
        return _summed(parts)

    reduced = rows.select(embedding_col).mapInArrow(partial_sums, _SUMS_SCHEMA).repartition("leaf_id")
    table = reduced.mapInArrow(reduce_sums, _SUMS_SCHEMA).toArrow()
    if table.num_rows == 0:
        return tree
    sums = arrow_matrix(table.column("total"), dim, np.float64)
    return refined(tree, table.column("leaf_id").to_numpy(), sums)


def assign_leaves(
    df: DataFrame, tree: Tree, id_col: str = "id", embedding_col: str = "embedding", coarse_probe: int = 1
) -> DataFrame:
    """``df`` with a ``leaf_id`` column: the leaf each row reaches by descending ``tree``.

    ``coarse_probe`` = 1 follows the nearest coarse cluster, as training did; larger values also look at the
    leaves of the next coarse clusters, which lowers the mean distance to the leaf centroid for points near a
    coarse boundary (bench/kmeans.py).
    """
    load = shipped(df.sparkSession, tree)
    return with_label(
        df, embedding_col, "leaf_id", tree.leaves.shape[1], lambda x: nearest_leaf(x, load(), coarse_probe)[0]
    )


def embedding_dimension(rows: DataFrame, embedding_col: str = "embedding") -> int | None:
    """The most common length of the non-null vectors of ``rows`` (the smaller one on a tie); None if none."""
    top = (
        rows.where(F.col(embedding_col).isNotNull())
        .groupBy(F.size(embedding_col).alias("length"))
        .count()
        .orderBy(F.desc("count"), "length")
        .first()
    )
    return None if top is None else int(top["length"])


@dataclass(frozen=True)
class Subject:
    """What a clustering run works on: its id column, its embeddings, its output tables and its config section."""

    name: str
    id_col: str
    embeddings: Table
    centroids: Table
    clusters: Table
    rejects: Table
    section: str
    kept: Table  # the extraction table of the rows still in the dataset: embeddings of others are not clustered

    @classmethod
    def of(cls, item: str, section: str) -> Subject:
        """The subject of ``item`` ("sentence" or "image"): its silver tables by the contracts' names."""

        def silver(name: str) -> Table:
            return TABLES[f"silver.{name}"]

        return cls(
            f"{item}s",
            f"{item}_id",
            silver(f"{item}_embeddings"),
            silver(f"{item}_centroids"),
            silver(f"{item}_clusters"),
            silver(f"{item}_cluster_rejects"),
            section,
            silver(f"{item}s"),
        )


@dataclass(frozen=True)
class ClusterSummary:
    """What a clustering run did."""

    model_id: str | None
    rows: int
    coarse_clusters: int
    leaves: int
    newly_assigned: int
    trained: bool
    rejected: int = 0  # rows whose embedding could not be used (in the subject's rejects table)
    subject: str = "rows"
    note: str = ""  # why nothing was clustered, when nothing was
    rejects_table: str = ""

    def __str__(self) -> str:
        job = f"cluster_{self.subject}"
        if self.note:
            return f"{job}: {self.note}"
        lines = []
        if self.rejected:
            lines.append(
                f"{job}: model {self.model_id}: {self.rejected} of {self.rows} embeddings unusable, "
                f"see {self.rejects_table}"
            )
        if self.rejected == self.rows:
            lines.append(f"{job}: model {self.model_id}: nothing left to cluster")
        elif self.trained:
            lines.append(
                f"{job}: model {self.model_id}: {self.rows - self.rejected} {self.subject} -> "
                f"{self.coarse_clusters} coarse cluster{'s' * (self.coarse_clusters != 1)}, "
                f"{self.leaves} lea{'ves' if self.leaves != 1 else 'f'}; "
                f"{self.newly_assigned} {self.subject} assigned"
            )
        else:
            lines.append(
                f"{job}: model {self.model_id}: kept the existing tree ({self.leaves} leaves), "
                f"assigned {self.newly_assigned} new {self.subject}"
            )
        return "\n".join(lines)


def run_cluster(lakehouse: Lakehouse, cfg: ClusterConfig, subject: Subject) -> ClusterSummary:
    """Train (or reuse) the tree of one model over ``subject``'s embeddings and give every row its leaf.

    Embeddings that are null, of another length than the model's (the tree's, or else the most common one), not
    finite or all zero go to the subject's rejects table with a reason each, and the rest are clustered. Absent
    or empty embeddings write nothing and return zero counts.
    """
    job = f"cluster_{subject.name}"
    named: dict[str, Any] = {"subject": subject.name, "rejects_table": subject.rejects}
    if not lakehouse.exists(subject.embeddings):
        return ClusterSummary(None, 0, 0, 0, 0, False, note=f"{subject.embeddings} does not exist yet", **named)
    embeddings = lakehouse.read(subject.embeddings)
    model_id = resolve_model_id(embeddings, cfg.embedding_model, f"{subject.section}.embedding_model")
    rows = embeddings.filter(F.col("model_id") == model_id).select(subject.id_col, "embedding") if model_id else None
    if rows is not None and lakehouse.exists(subject.kept):
        # Rows a later dedup removed from the extraction table keep their embedding, but leave the dataset.
        rows = rows.join(lakehouse.read(subject.kept).select(subject.id_col), subject.id_col, "left_semi")
    n = rows.count() if rows is not None else 0
    if rows is None or model_id is None or n == 0:
        note = f"no {subject.name} embeddings for model {model_id!r}; nothing to cluster"
        return ClusterSummary(model_id, 0, 0, 0, 0, False, note=note, **named)

    def of_model(table: Table) -> DataFrame:
        return lakehouse.read(table).filter(F.col("model_id") == model_id)

    keep = not cfg.retrain and lakehouse.exists(subject.centroids) and of_model(subject.centroids).limit(1).count()
    tree = tree_from_centroids(lakehouse.read(subject.centroids), model_id) if keep else None
    dim = int(tree.leaves.shape[1]) if tree is not None else embedding_dimension(rows)
    rows, rejected = usable_embeddings(lakehouse, rows, subject.rejects, subject.id_col, model_id, dim)
    write_funnel(lakehouse, job, [FunnelStep("usable_embedding", n, n - rejected)], Models(model_id=model_id))
    if rejected == n:
        return ClusterSummary(model_id, n, 0, 0, 0, False, rejected, **named)

    if tree is not None:
        done = of_model(subject.clusters).select(subject.id_col) if lakehouse.exists(subject.clusters) else None
        todo = rows.join(done, subject.id_col, "left_anti") if done is not None else rows
        assigned = assign_leaves(todo, tree, subject.id_col, coarse_probe=cfg.assign_coarse_probe).select(
            subject.id_col, F.lit(model_id).alias("model_id"), "leaf_id"
        )
        added = lakehouse.insert_new(subject.clusters, assigned)
        return ClusterSummary(model_id, n, tree.coarse.shape[0], tree.n_leaves, added, False, rejected, **named)

    tree = train_tree(rows, cfg, subject.id_col, n_rows=n - rejected, section=subject.section)
    assigned = assign_leaves(rows, tree, subject.id_col, coarse_probe=cfg.assign_coarse_probe).select(
        subject.id_col, F.lit(model_id).alias("model_id"), "leaf_id"
    )
    lakehouse.replace_partition(subject.clusters, assigned, "model_id", model_id)
    counts = of_model(subject.clusters).groupBy("leaf_id").count().toArrow()
    leaf_sizes = np.zeros(tree.n_leaves, np.int64)
    leaf_sizes[counts.column("leaf_id").to_numpy()] = counts.column("count").to_numpy()
    frame = centroids_frame(lakehouse.spark, tree, model_id, leaf_sizes)
    lakehouse.replace_partition(subject.centroids, frame, "model_id", model_id)
    total = int(leaf_sizes.sum())
    return ClusterSummary(model_id, n, tree.coarse.shape[0], tree.n_leaves, total, True, rejected, **named)
