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
closure, or, once its leaves pass ``INLINE_TREE_BYTES``, as a file that every executor memory-maps (``shipped``).

``run_cluster_sentences`` applies this to ``silver.sentence_embeddings`` (section ``cluster``) and writes
``silver.sentence_centroids`` (model_id, level, centroid_id, parent_id, vector, size) and
``silver.sentence_clusters`` (sentence_id, model_id, leaf_id); ``run_cluster_images`` does the same for
``silver.image_embeddings`` (section ``image_cluster``) into ``silver.image_centroids`` and
``silver.image_clusters``, the image clusters that balance sampling draws from. Level 0 is the coarse level;
level 1 holds the leaves, whose ``centroid_id`` is the ``leaf_id`` used everywhere else. Both tables are
rewritten for one model id at a time (an atomic replace of that model's rows); with ``retrain: false`` an
existing tree is kept and only rows without a leaf are assigned. Embeddings that cannot be clustered (null, of
another length than the model's, NaN or infinite values, all zero) are left out, each with a reason in
``silver.sentence_cluster_rejects`` / ``silver.image_cluster_rejects``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from realsyn.config import ClusterConfig, Config, ConfigError
from realsyn.contracts import (
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTER_REJECTS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_SENTENCE_CENTROIDS,
    SILVER_SENTENCE_CLUSTER_REJECTS,
    SILVER_SENTENCE_CLUSTERS,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCES,
    Table,
)
from realsyn.funnel import FunnelStep, write_funnel
from realsyn.tables import Lakehouse
from realsyn.workers import array_device
from udfs.kmeans import local_refined, refined, replace_fine, spherical_kmeans, sums_by_label
from udfs.tree import Tree, boundary_rows, nearest_leaf
from udfs.vectors import arrow_matrix, assign, embedding_problems, matrix_column, top_p

log = logging.getLogger(__name__)

LEVEL_COARSE = 0
LEVEL_LEAF = 1

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

_HASH_RANGE = 1 << 30

# Leaves larger than this reach the tasks as a memory-mapped file rather than inside the task closure.
INLINE_TREE_BYTES = 64 << 20
_shipped_dir: str | None = None
_mapped: dict[str, Tree] = {}


def shipped(spark: SparkSession, tree: Tree) -> Callable[[], Tree]:
    """A function that returns ``tree`` inside Spark tasks (and on the driver).

    A tree whose leaves hold at most ``INLINE_TREE_BYTES`` travels inside the task closure. A larger one (the
    paper's 2M leaves x 768 floats are 6 GB) would be unpickled by every task of every Python worker; its leaves
    are instead written once to an .npy file that ``SparkContext.addFile`` copies to each executor, where tasks
    memory-map it: the workers of one executor share one copy in the page cache, and a task pays nothing to load
    it again. The file lives in a temporary folder removed when the driver exits (executors that join later
    still fetch it).
    """
    if tree.leaves.nbytes <= INLINE_TREE_BYTES:
        return functools.partial(_identity, tree)
    global _shipped_dir
    if _shipped_dir is None:
        _shipped_dir = tempfile.mkdtemp(prefix="realsyn-trees-")
        atexit.register(shutil.rmtree, _shipped_dir, ignore_errors=True)
    name = f"tree-{uuid.uuid4().hex}.npy"
    path = f"{_shipped_dir}/{name}"
    np.save(path, np.ascontiguousarray(tree.leaves, np.float32))
    spark.sparkContext.addFile(path)
    return functools.partial(_mapped_tree, name, tree.coarse, tree.parent)


def _identity(tree: Tree) -> Tree:
    return tree


def _mapped_tree(name: str, coarse: np.ndarray, parent: np.ndarray) -> Tree:
    """The tree whose leaves were shipped as file ``name``, memory-mapped once per Python process."""
    tree = _mapped.get(name)
    if tree is None:
        from pyspark import SparkFiles

        tree = _mapped[name] = Tree(coarse, np.load(SparkFiles.get(name), mmap_mode="r"), parent)
        while len(_mapped) > 2:  # refinement ships a new tree per step; older ones are not used again
            del _mapped[next(iter(_mapped))]
    return tree


def hash_uniform(id_col: str, seed: int) -> Column:
    """A number in [0, 1) that depends only on the id and the seed: a sample that ignores partitioning."""
    return F.pmod(F.xxhash64(F.col(id_col), F.lit(seed)), F.lit(_HASH_RANGE)) / F.lit(float(_HASH_RANGE))


def coarse_cluster_count(n_rows: int, cfg: ClusterConfig) -> int:
    """K1: ``cfg.coarse_clusters`` if set, else about sqrt(number of leaves) so both levels have similar fan-out."""
    if cfg.coarse_clusters > 0:
        return cfg.coarse_clusters
    return max(1, round(math.sqrt(n_rows / cfg.leaf_size)))


def fine_cluster_count(n_rows: int, leaf_size: int) -> int:
    """Leaves under a coarse cluster of ``n_rows`` rows: about one per ``leaf_size`` rows, at least one."""
    return max(1, round(n_rows / leaf_size))


def sorted_matrix(table: pa.Table, id_col: str, embedding_col: str, dim: int) -> np.ndarray:
    """Embeddings ordered by id, so training does not depend on the order rows arrive in."""
    order = pc.sort_indices(table, sort_keys=[(id_col, "ascending")])
    return arrow_matrix(table.column(embedding_col).take(order), dim)


def hash_sample(rows: DataFrame, id_col: str, seed: int, fraction: float) -> pa.Table:
    """About ``fraction`` of ``rows`` chosen by the hash of their id (:func:`hash_uniform`), as Arrow on the
    driver; the whole (then small) input when a tiny fraction misses every row."""
    sample = rows.filter(hash_uniform(id_col, seed) < fraction).toArrow() if fraction < 1 else rows.toArrow()
    return sample if sample.num_rows else rows.toArrow()


def train_tree(
    df: DataFrame,
    cfg: ClusterConfig,
    id_col: str = "id",
    embedding_col: str = "embedding",
    n_rows: int | None = None,
    section: str = "cluster",
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
    rows: DataFrame, tree: Tree, cfg: ClusterConfig, id_col: str, embedding_col: str, section: str = "cluster"
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


def _with_label(
    df: DataFrame, embedding_col: str, out_col: str, dim: int, label: Callable[[np.ndarray], np.ndarray]
) -> DataFrame:
    """``df`` plus ``out_col``: ``label`` applied to each Arrow batch's (rows, ``dim``) embedding matrix."""
    schema = T.StructType([*df.schema.fields, T.StructField(out_col, T.LongType(), False)])

    def labelled(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            labels = label(arrow_matrix(batch.column(embedding_col), dim))
            yield batch.append_column(out_col, pa.array(labels, pa.int64()))

    return df.mapInArrow(labelled, schema)


def with_nearest(df: DataFrame, centroids: np.ndarray, embedding_col: str, out_col: str, p: int = 1) -> DataFrame:
    """``df`` plus the index of the nearest of ``centroids`` (a flat level) in ``out_col``; with ``p`` > 1, one
    row for each of the ``p`` nearest (best first)."""
    if p == 1:
        return _with_label(df, embedding_col, out_col, centroids.shape[1], lambda x: assign(x, centroids)[0])
    schema = T.StructType([*df.schema.fields, T.StructField(out_col, T.LongType(), False)])
    dim = centroids.shape[1]

    def labelled(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            idx, _ = top_p(arrow_matrix(batch.column(embedding_col), dim), centroids, p)
            rows = pa.array(np.repeat(np.arange(batch.num_rows), idx.shape[1]))
            yield batch.take(rows).append_column(out_col, pa.array(idx.reshape(-1), pa.int64()))

    return df.mapInArrow(labelled, schema)


def assign_leaves(
    df: DataFrame, tree: Tree, id_col: str = "id", embedding_col: str = "embedding", coarse_probe: int = 1
) -> DataFrame:
    """``df`` with a ``leaf_id`` column: the leaf each row reaches by descending ``tree``.

    ``coarse_probe`` = 1 follows the nearest coarse cluster, as training did; larger values also look at the
    leaves of the next coarse clusters, which lowers the mean distance to the leaf centroid for points near a
    coarse boundary (bench/kmeans.py).
    """
    load = shipped(df.sparkSession, tree)
    return _with_label(
        df, embedding_col, "leaf_id", tree.leaves.shape[1], lambda x: nearest_leaf(x, load(), coarse_probe)[0]
    )


def centroids_frame(spark: SparkSession, tree: Tree, model_id: str, leaf_sizes: np.ndarray) -> DataFrame:
    """The rows of a centroids table for ``tree``: coarse level 0 (size = sum of its leaves) and leaves level 1.

    ``leaf_sizes[i]`` is the number of rows of leaf ``i``. Built from Arrow buffers: a tree of millions of
    leaves goes to Spark without a Python object per float.
    """
    sizes = np.asarray(leaf_sizes, np.int64)
    if sizes.shape != (tree.n_leaves,):
        raise ValueError(f"{sizes.shape[0]} leaf sizes for {tree.n_leaves} leaves")
    n_coarse = tree.coarse.shape[0]
    coarse_sizes = np.bincount(tree.parent, weights=sizes, minlength=n_coarse).astype(np.int64)
    n = n_coarse + tree.n_leaves
    table = pa.table(
        {
            "model_id": pa.array(np.full(n, model_id, dtype=object), pa.string()),
            "level": pa.array(np.r_[np.full(n_coarse, LEVEL_COARSE), np.full(tree.n_leaves, LEVEL_LEAF)], pa.int32()),
            "centroid_id": pa.array(np.r_[np.arange(n_coarse), np.arange(tree.n_leaves)], pa.int64()),
            "parent_id": pa.array(
                np.r_[np.zeros(n_coarse, np.int64), tree.parent],
                pa.int64(),
                mask=np.r_[np.ones(n_coarse, bool), np.zeros(tree.n_leaves, bool)],
            ),
            "vector": matrix_column(np.concatenate([tree.coarse, tree.leaves])),
            "size": pa.array(np.r_[coarse_sizes, sizes], pa.int64()),
        }
    )
    return spark.createDataFrame(table, SILVER_SENTENCE_CENTROIDS.schema)  # both centroid tables have it


def tree_from_centroids(centroids: DataFrame, model_id: str) -> Tree:
    """Load the tree of ``model_id`` back from a centroids table (collected to the driver through Arrow)."""
    table = (
        centroids.filter(F.col("model_id") == model_id).select("level", "centroid_id", "parent_id", "vector").toArrow()
    )
    if table.num_rows == 0:
        return Tree.from_parts(np.zeros((0, 0), np.float32), [])
    level = table.column("level").to_numpy()
    ids = table.column("centroid_id").to_numpy()
    vectors = table.column("vector")
    dim = len(vectors[0])
    coarse_rows = np.flatnonzero(level == LEVEL_COARSE)
    leaf_rows = np.flatnonzero(level == LEVEL_LEAF)
    coarse_rows, leaf_rows = coarse_rows[np.argsort(ids[coarse_rows])], leaf_rows[np.argsort(ids[leaf_rows])]
    if coarse_rows.size == 0:
        return Tree.from_parts(np.zeros((0, dim), np.float32), [])
    coarse = arrow_matrix(vectors.take(pa.array(coarse_rows)), dim)
    leaves = arrow_matrix(vectors.take(pa.array(leaf_rows)), dim)
    parent = table.column("parent_id").take(pa.array(leaf_rows)).to_numpy(zero_copy_only=False).astype(np.int64)
    if not np.array_equal(ids[leaf_rows], np.arange(leaf_rows.size)) or np.any(np.diff(parent) < 0):
        raise ValueError(f"centroids of {model_id!r} are not a tree with leaves numbered by parent")
    return Tree(coarse, leaves, parent)


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


def embedding_rejects(rows: DataFrame, id_col: str, dim: int, embedding_col: str = "embedding") -> DataFrame:
    """(id, reason, detail) for every row of ``rows`` whose embedding is not a usable ``dim``-wide vector (see
    ``udfs.vectors.embedding_problems``), checked on Arrow batches in one pass."""
    schema = T.StructType(
        [
            T.StructField(id_col, rows.schema[id_col].dataType, True),
            T.StructField("reason", T.StringType(), False),
            T.StructField("detail", T.StringType(), False),
        ]
    )
    arrow_schema = to_arrow_schema(schema)

    def check(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            bad, reasons, details = embedding_problems(batch.column(embedding_col), dim)
            if bad.size:
                yield pa.RecordBatch.from_arrays(
                    [batch.column(id_col).take(pa.array(bad)), pa.array(reasons), pa.array(details)],
                    schema=arrow_schema,
                )

    return rows.select(id_col, embedding_col).mapInArrow(check, schema)


def usable_embeddings(
    lakehouse: Lakehouse, rows: DataFrame, rejects: Table, id_col: str, model_id: str, dim: int | None
) -> tuple[DataFrame, int]:
    """``rows`` (id, embedding) less those whose embedding is not a usable ``dim``-wide vector, and how many those
    are. They replace ``model_id``'s rows of the table ``rejects`` (id, model_id, reason, detail), so a rerun
    writes the same rejects; when there are none, ``rows`` is returned as it is (no join)."""
    found = embedding_rejects(rows, id_col, dim if dim is not None else 0).select(
        id_col, F.lit(model_id).alias("model_id"), "reason", "detail"
    )
    lakehouse.replace_partition(rejects, found, "model_id", model_id)
    written = lakehouse.read(rejects).filter(F.col("model_id") == model_id)
    n_rejected = written.count()
    return (rows.join(written.select(id_col), id_col, "left_anti") if n_rejected else rows), n_rejected


def resolve_model_id(df: DataFrame, configured: str | None, key: str) -> str | None:
    """The model id to work on: ``configured`` if set, else the only one in ``df`` (None when ``df`` is empty).

    Several models and no configured one is a configuration error that names ``key``.
    """
    if configured is not None:
        return configured
    found = sorted(r["model_id"] for r in df.select("model_id").distinct().limit(2).collect())
    if len(found) > 1:
        raise ConfigError(f"{key}: the embeddings hold several models ({', '.join(found)}, ...); set {key}")
    return found[0] if found else None


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


SENTENCES = Subject(
    "sentences",
    "sentence_id",
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_CENTROIDS,
    SILVER_SENTENCE_CLUSTERS,
    SILVER_SENTENCE_CLUSTER_REJECTS,
    "cluster",
    SILVER_SENTENCES,
)
IMAGES = Subject(
    "images",
    "image_id",
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_CLUSTER_REJECTS,
    "image_cluster",
    SILVER_IMAGES,
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


def run_cluster_sentences(lakehouse: Lakehouse, cfg: Config) -> ClusterSummary:
    """Train (or reuse) the sentence tree of one model and give every sentence its leaf (section ``cluster``)."""
    return run_cluster(lakehouse, cfg.cluster, SENTENCES)


def run_cluster_images(lakehouse: Lakehouse, cfg: Config) -> ClusterSummary:
    """Train (or reuse) the image tree of one model and give every image its leaf (section ``image_cluster``)."""
    return run_cluster(lakehouse, cfg.image_cluster, IMAGES)


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
    model_id = resolve_model_id(embeddings, cfg.model_id, f"{subject.section}.model_id")
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
    write_funnel(lakehouse, f"{job}[{model_id}]", [FunnelStep("usable_embedding", n, n - rejected)])
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
