"""Hierarchical spherical k-means in Spark, generic over any (id, embedding) DataFrame.

The coarse level is trained with faiss on a sample collected to the driver (about ``max_points_per_centroid``
rows per centroid, chosen by a hash of the id so the sample does not depend on partitioning); its centroids
travel to the executors inside the UDF closure, which PySpark ships as a broadcast variable once it is large.
Every row is then given its coarse cluster, and each coarse cluster's fine level is trained in parallel with a
grouped ``applyInPandas`` on a hash sample of that cluster, with ``round(n_c / leaf_size)`` fine centroids so
that leaves hold about ``leaf_size`` rows whatever the skew of the coarse clusters. Finally every row descends
the tree to its leaf.

``run_cluster_sentences`` applies this to ``silver.sentence_embeddings`` and writes ``silver.centroids``
(model_id, level, centroid_id, parent_id, vector, size) and ``silver.sentence_clusters`` (sentence_id,
model_id, leaf_id). Level 0 is the coarse level; level 1 holds the leaves, whose ``centroid_id`` is the
``leaf_id`` used everywhere else. Both tables are rewritten for one model id at a time (an atomic replace of
that model's rows); with ``cluster.retrain: false`` an existing tree is kept and only sentences without a leaf
are assigned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.config import ClusterConfig, Config, ConfigError
from realsyn.tables import SILVER_CENTROIDS, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCE_EMBEDDINGS, Lakehouse
from udfs.kmeans import Tree, as_matrix, assign, descend, spherical_kmeans

log = logging.getLogger(__name__)

LEVEL_COARSE = 0
LEVEL_LEAF = 1

CENTROIDS_SCHEMA = T.StructType(
    [
        T.StructField("model_id", T.StringType(), False),
        T.StructField("level", T.IntegerType(), False),
        T.StructField("centroid_id", T.LongType(), False),
        T.StructField("parent_id", T.LongType(), True),
        T.StructField("vector", T.ArrayType(T.FloatType(), False), False),
        T.StructField("size", T.LongType(), False),
    ]
)

_FINE_SCHEMA = T.StructType(
    [
        T.StructField("coarse_id", T.LongType(), False),
        T.StructField("local_id", T.LongType(), False),
        T.StructField("vector", T.ArrayType(T.FloatType(), False), False),
    ]
)

_HASH_RANGE = 1 << 30


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


def _sorted_matrix(pdf: pd.DataFrame, id_col: str, embedding_col: str) -> np.ndarray:
    """Embeddings ordered by id, so training does not depend on the order rows arrive in."""
    ordered = pdf.sort_values(id_col, kind="stable")
    return as_matrix(ordered[embedding_col])


def train_tree(
    df: DataFrame,
    cfg: ClusterConfig,
    id_col: str = "id",
    embedding_col: str = "embedding",
    n_rows: int | None = None,
) -> Tree:
    """Train the two-level tree on ``df`` (one row per id, unit-norm embeddings); an empty ``df`` gives no leaves.

    Only the coarse sample and the centroids reach the driver. ``n_rows`` saves a count when the caller knows it.
    """
    rows = df.select(id_col, embedding_col)
    n = rows.count() if n_rows is None else n_rows
    if n == 0:
        return Tree.from_parts(np.zeros((0, 0), np.float32), [])
    k1 = coarse_cluster_count(n, cfg)
    fraction = min(1.0, k1 * cfg.max_points_per_centroid / n)
    sample = rows.filter(hash_uniform(id_col, cfg.seed) < fraction).toPandas()
    if sample.empty:  # a tiny fraction can miss every row; fall back to the whole (then small) input
        sample = rows.toPandas()
    coarse = spherical_kmeans(
        _sorted_matrix(sample, id_col, embedding_col),
        k1,
        niter=cfg.niter,
        seed=cfg.seed,
        max_points_per_centroid=cfg.max_points_per_centroid,
        resampling_steps=cfg.resampling_steps,
        resample_size=cfg.resample_size,
    )
    with_coarse = _with_nearest(rows, coarse, id_col, embedding_col, "coarse_id")
    counts = with_coarse.groupBy("coarse_id").count().collect()
    spark = df.sparkSession
    plan_rows = []
    for r in counts:
        k = fine_cluster_count(int(r["count"]), cfg.leaf_size)
        plan_rows.append((int(r["coarse_id"]), k, min(1.0, k * cfg.max_points_per_centroid / int(r["count"]))))
    plan = spark.createDataFrame(plan_rows, "coarse_id long, k long, fraction double")
    sampled = (
        with_coarse.join(F.broadcast(plan), "coarse_id")
        .filter(hash_uniform(id_col, cfg.seed + 1) < F.col("fraction"))
        .select("coarse_id", "k", id_col, embedding_col)
    )

    def train_fine(pdf: pd.DataFrame) -> pd.DataFrame:
        coarse_id = int(pdf["coarse_id"].iloc[0])
        centroids = spherical_kmeans(
            _sorted_matrix(pdf, id_col, embedding_col),
            int(pdf["k"].iloc[0]),
            niter=cfg.niter,
            seed=cfg.seed + coarse_id,
            max_points_per_centroid=cfg.max_points_per_centroid,
            resampling_steps=cfg.resampling_steps,
            resample_size=cfg.resample_size,
            threads=1,
        )
        return pd.DataFrame(
            {"coarse_id": coarse_id, "local_id": np.arange(len(centroids), dtype=np.int64), "vector": list(centroids)}
        )

    fine_rows = sampled.groupBy("coarse_id").applyInPandas(train_fine, _FINE_SCHEMA).toPandas()
    fine: list[np.ndarray] = []
    by_coarse = {int(g["coarse_id"].iloc[0]): g.sort_values("local_id") for _, g in fine_rows.groupby("coarse_id")}
    for c in range(coarse.shape[0]):
        group = by_coarse.get(c)
        fine.append(as_matrix(group["vector"]) if group is not None else np.zeros((0, coarse.shape[1]), np.float32))
    return Tree.from_parts(coarse, fine)


def _with_nearest(df: DataFrame, centroids: np.ndarray, id_col: str, embedding_col: str, out_col: str) -> DataFrame:
    """``df`` plus the index of the nearest of ``centroids`` (a flat level) in ``out_col``."""
    schema = T.StructType([*df.schema.fields, T.StructField(out_col, T.LongType(), False)])

    def nearest(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for pdf in batches:
            labels, _ = assign(as_matrix(pdf[embedding_col], centroids.shape[1]), centroids)
            yield pdf.assign(**{out_col: labels})

    return df.mapInPandas(nearest, schema)


def assign_leaves(
    df: DataFrame, tree: Tree, id_col: str = "id", embedding_col: str = "embedding", coarse_probe: int = 1
) -> DataFrame:
    """``df`` with a ``leaf_id`` column: the leaf each row reaches by descending ``tree``.

    ``coarse_probe`` = 1 follows the nearest coarse cluster, as training did; larger values also look at the
    leaves of the next coarse clusters, which lowers the mean distance to the leaf centroid for points near a
    coarse boundary (bench/kmeans.py).
    """
    schema = T.StructType([*df.schema.fields, T.StructField("leaf_id", T.LongType(), False)])
    dim = tree.leaves.shape[1]

    def leaves(batches: Iterable[pd.DataFrame]) -> Iterable[pd.DataFrame]:
        for pdf in batches:
            ids, _, _ = descend(as_matrix(pdf[embedding_col], dim), tree, 1, coarse_probe)
            yield pdf.assign(leaf_id=ids[:, 0])

    return df.mapInPandas(leaves, schema)


def centroids_frame(spark: SparkSession, tree: Tree, model_id: str, leaf_sizes: dict[int, int]) -> DataFrame:
    """The rows of ``silver.centroids`` for ``tree``: coarse level 0 (size = sum of its leaves) and leaves level 1."""
    sizes = np.array([leaf_sizes.get(i, 0) for i in range(tree.n_leaves)], dtype=np.int64)
    coarse_sizes = np.bincount(tree.parent, weights=sizes, minlength=tree.coarse.shape[0]).astype(np.int64)
    rows: list[tuple[str, int, int, int | None, list[float], int]] = [
        (model_id, LEVEL_COARSE, i, None, [float(v) for v in vec], int(coarse_sizes[i]))
        for i, vec in enumerate(tree.coarse)
    ]
    rows += [
        (model_id, LEVEL_LEAF, i, int(tree.parent[i]), [float(v) for v in vec], int(sizes[i]))
        for i, vec in enumerate(tree.leaves)
    ]
    return spark.createDataFrame(rows, CENTROIDS_SCHEMA)


def tree_from_centroids(centroids: DataFrame, model_id: str) -> Tree:
    """Load the tree of ``model_id`` back from a ``silver.centroids`` DataFrame (small: collected)."""
    pdf = centroids.filter(F.col("model_id") == model_id).toPandas()
    coarse_rows = pdf[pdf["level"] == LEVEL_COARSE].sort_values("centroid_id")
    leaf_rows = pdf[pdf["level"] == LEVEL_LEAF].sort_values("centroid_id")
    if coarse_rows.empty:
        return Tree.from_parts(np.zeros((0, 0), np.float32), [])
    coarse = as_matrix(coarse_rows["vector"])
    leaves = as_matrix(leaf_rows["vector"], coarse.shape[1])
    parent = leaf_rows["parent_id"].to_numpy(dtype=np.int64)
    if not np.array_equal(leaf_rows["centroid_id"].to_numpy(), np.arange(len(leaf_rows))) or np.any(
        np.diff(parent) < 0
    ):
        raise ValueError(f"centroids of {model_id!r} are not a tree with leaves numbered by parent")
    return Tree(coarse, leaves, parent)


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
class ClusterSummary:
    """What ``run_cluster_sentences`` did."""

    model_id: str | None
    sentences: int
    coarse_clusters: int
    leaves: int
    newly_assigned: int
    trained: bool


def run_cluster_sentences(lakehouse: Lakehouse, cfg: Config) -> ClusterSummary:
    """Train (or reuse) the sentence tree of one model and give every sentence its leaf.

    Absent or empty embeddings write nothing and return zero counts.
    """
    if not lakehouse.exists(SILVER_SENTENCE_EMBEDDINGS):
        print(f"cluster_sentences: {SILVER_SENTENCE_EMBEDDINGS} does not exist yet; nothing to cluster")
        return ClusterSummary(None, 0, 0, 0, 0, False)
    embeddings = lakehouse.read(SILVER_SENTENCE_EMBEDDINGS)
    model_id = resolve_model_id(embeddings, cfg.cluster.model_id, "cluster.model_id")
    sentences = (
        embeddings.filter(F.col("model_id") == model_id).select("sentence_id", "embedding") if model_id else None
    )
    n = sentences.count() if sentences is not None else 0
    if sentences is None or model_id is None or n == 0:
        print(f"cluster_sentences: no sentence embeddings for model {model_id!r}; nothing to cluster")
        return ClusterSummary(model_id, 0, 0, 0, 0, False)

    have_tree = (
        not cfg.cluster.retrain
        and lakehouse.exists(SILVER_CENTROIDS)
        and lakehouse.read(SILVER_CENTROIDS).filter(F.col("model_id") == model_id).limit(1).count() > 0
    )
    if have_tree:
        tree = tree_from_centroids(lakehouse.read(SILVER_CENTROIDS), model_id)
        done = (
            lakehouse.read(SILVER_SENTENCE_CLUSTERS).filter(F.col("model_id") == model_id).select("sentence_id")
            if lakehouse.exists(SILVER_SENTENCE_CLUSTERS)
            else None
        )
        todo = sentences.join(done, "sentence_id", "left_anti") if done is not None else sentences
        assigned = assign_leaves(todo, tree, "sentence_id", coarse_probe=cfg.cluster.assign_coarse_probe).select(
            "sentence_id", F.lit(model_id).alias("model_id"), "leaf_id"
        )
        before = _count_model(lakehouse, model_id)
        lakehouse.insert_new(SILVER_SENTENCE_CLUSTERS, assigned, ["sentence_id", "model_id"])
        added = _count_model(lakehouse, model_id) - before
        print(f"cluster_sentences: model {model_id}: kept the existing tree, assigned {added} new sentences")
        return ClusterSummary(model_id, n, tree.coarse.shape[0], tree.n_leaves, added, False)

    tree = train_tree(sentences, cfg.cluster, "sentence_id", n_rows=n)
    assigned = assign_leaves(sentences, tree, "sentence_id", coarse_probe=cfg.cluster.assign_coarse_probe).select(
        "sentence_id", F.lit(model_id).alias("model_id"), "leaf_id"
    )
    lakehouse.replace_partition(SILVER_SENTENCE_CLUSTERS, assigned, "model_id", model_id)
    written = lakehouse.read(SILVER_SENTENCE_CLUSTERS).filter(F.col("model_id") == model_id)
    leaf_sizes = {int(r["leaf_id"]): int(r["count"]) for r in written.groupBy("leaf_id").count().collect()}
    spark = lakehouse.spark
    lakehouse.replace_partition(
        SILVER_CENTROIDS, centroids_frame(spark, tree, model_id, leaf_sizes), "model_id", model_id
    )
    total = sum(leaf_sizes.values())
    print(
        f"cluster_sentences: model {model_id}: {n} sentences -> {tree.coarse.shape[0]} coarse clusters, "
        f"{tree.n_leaves} leaves; {total} sentences assigned"
    )
    return ClusterSummary(model_id, n, tree.coarse.shape[0], tree.n_leaves, total, True)


def _count_model(lakehouse: Lakehouse, model_id: str) -> int:
    if not lakehouse.exists(SILVER_SENTENCE_CLUSTERS):
        return 0
    return lakehouse.read(SILVER_SENTENCE_CLUSTERS).filter(F.col("model_id") == model_id).count()
