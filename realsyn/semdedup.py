"""Semantic near-duplicates: embedding cosine above a threshold, searched only within k-means clusters.

This is the search of NeMo Curator's SemDeDup (Abbas et al. 2023): spherical k-means splits the embeddings
into clusters, and pairs are compared exactly (one matrix product per cluster) only inside a cluster, so the
work is about n * (cluster size) instead of n^2. Where SemDeDup then keeps the item farthest from the
centroid, here every pair with cosine >= ``threshold`` is an edge, the edges are grouped by connected
components (:mod:`realsyn.components`, union-find semantics) and the caller's ranking picks one
representative per group, the same rule as every other near-duplicate step of realsyn.

Generic over any DataFrame with an id column and an L2-normalised ``array<float>`` embedding column (images or
sentences). It runs on the k-means path of clustering (:mod:`realsyn.vectors`): centroids trained on the driver
from a hash sample of the ids read as Arrow (the only data the driver holds), rows assigned to their nearest
centroids by an Arrow map over the tasks. Shared by the image and the sentence extraction stages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.components import group_duplicates
from realsyn.config import registry_path
from realsyn.config_sections import EmbedConfig
from realsyn.contracts import Table
from realsyn.tables import Lakehouse
from realsyn.vectors import hash_sample, sorted_matrix, with_nearest
from udfs.kmeans import spherical_kmeans
from udfs.models import RegistryError, load_registry
from udfs.vectors import as_matrix, l2_normalize

log = logging.getLogger(__name__)

CLUSTER = "cluster"
# faiss trains on at most this many points per centroid anyway; more would only cost driver memory.
_POINTS_PER_CENTROID = 256
SIMILARITY = "similarity"


@dataclass(frozen=True)
class SemDedupParams:
    """Knobs of the semantic near-duplicate search.

    ``threshold``: cosine at or above which two items are duplicates. ``items_per_cluster``: the number of
    k-means clusters is ceil(n / items_per_cluster) (SemDeDup uses ~50k clusters for LAION-440M, ~9k per
    cluster). ``clusters_per_item``: each item is searched in its nearest this-many clusters (1 as in SemDeDup;
    2 also finds pairs that straddle a cluster border, at twice the work). ``max_train_points``: size of the
    deterministic sample the centroids are trained on. ``niter``, ``seed``: faiss k-means settings.
    """

    threshold: float = 0.95
    items_per_cluster: int = 1_000
    clusters_per_item: int = 1
    max_train_points: int = 200_000
    niter: int = 20
    seed: int = 0


def similar_pairs(
    ids: Sequence[str], vectors: npt.NDArray[np.float32], threshold: float, chunk_size: int = 2_048
) -> tuple[list[str], list[str], list[float]]:
    """All pairs (i < j by id) whose cosine is >= ``threshold``: (src ids, dst ids, similarities).

    ``vectors`` are rows of unit length (renormalised here). Work is one matrix product per chunk of
    ``chunk_size`` rows, so memory stays at ``chunk_size * len(ids)`` floats. ``src < dst`` always holds.
    """
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    sorted_ids = [ids[i] for i in order]
    x = l2_normalize(vectors[order]) if len(order) else vectors
    src: list[str] = []
    dst: list[str] = []
    sim: list[float] = []
    for start in range(0, x.shape[0], chunk_size):
        block = x[start : start + chunk_size] @ x.T
        rows, cols = np.nonzero(block >= np.float32(threshold))
        rows = rows + start
        keep = cols > rows
        for r, c in zip(rows[keep], cols[keep], strict=True):
            src.append(sorted_ids[r])
            dst.append(sorted_ids[c])
            sim.append(float(block[r - start, c]))
    return src, dst, sim


def train_centroids(df: DataFrame, id_col: str, embedding_col: str, params: SemDedupParams) -> np.ndarray | None:
    """Spherical k-means centroids for ``df``: k = ceil(n / items_per_cluster), trained on a deterministic sample;
    None for an empty ``df`` (nothing to train on).

    The sample is drawn as clustering draws its own (realsyn.vectors.hash_sample): about
    ``min(max_train_points, 256 * k)`` rows chosen by the hash of their id, so it does not depend on partitioning;
    only that sample reaches the driver, as Arrow.
    """
    n = df.count()
    if n == 0:
        return None
    k = math.ceil(n / params.items_per_cluster)
    size = min(params.max_train_points, _POINTS_PER_CENTROID * k)
    sample = hash_sample(df.select(id_col, embedding_col), id_col, params.seed, size / n)
    dim = len(sample.column(embedding_col)[0])
    x = l2_normalize(sorted_matrix(sample, id_col, embedding_col, dim))
    return spherical_kmeans(x, k, niter=params.niter, seed=params.seed, max_points_per_centroid=_POINTS_PER_CENTROID)


def duplicate_pairs(df: DataFrame, id_col: str, embedding_col: str, params: SemDedupParams) -> DataFrame:
    """Pairs ``(src, dst, similarity)`` with cosine >= ``params.threshold`` inside the same k-means cluster.

    ``src < dst``; a pair found in several clusters appears once (with its one similarity).
    """
    schema = T.StructType(
        [
            T.StructField("src", T.StringType(), False),
            T.StructField("dst", T.StringType(), False),
            T.StructField(SIMILARITY, T.DoubleType(), False),
        ]
    )
    centroids = train_centroids(df, id_col, embedding_col, params)
    if centroids is None:  # no rows, no pair
        return df.sparkSession.createDataFrame([], schema)
    clustered = with_nearest(
        df.select(id_col, embedding_col), centroids, embedding_col, CLUSTER, params.clusters_per_item
    )
    threshold = params.threshold

    def per_cluster(group: pd.DataFrame) -> pd.DataFrame:
        ids = [str(i) for i in group[id_col]]
        src, dst, sim = similar_pairs(ids, as_matrix(group[embedding_col]), threshold)
        # Typed columns: a group without pairs gives empty lists, which pandas would make float64 (and Arrow's
        # conversion of an empty float64 column to string fails in the worker).
        return pd.DataFrame(
            {
                "src": pd.Series(src, dtype=object),
                "dst": pd.Series(dst, dtype=object),
                SIMILARITY: pd.Series(sim, dtype="float64"),
            }
        )

    pairs = clustered.groupBy(CLUSTER).applyInPandas(per_cluster, schema)
    return pairs.groupBy("src", "dst").agg(F.max(SIMILARITY).alias(SIMILARITY))


def semantic_dedup(
    df: DataFrame,
    id_col: str,
    embedding_col: str,
    order_by: Sequence[Column],
    params: SemDedupParams,
) -> DataFrame:
    """Group semantic near-duplicates of ``df`` and choose one representative per group.

    Returns ``df`` with ``component`` (smallest id of the group) and ``representative`` (first by ``order_by``,
    then smallest id; see :func:`realsyn.components.choose_representatives`). Rows whose id equals their
    representative are the ones to keep. ``df`` must be unique on ``id_col``; ids are compared as strings.
    """
    pairs = duplicate_pairs(df, id_col, embedding_col, params)
    return group_duplicates(df, pairs, id_col, order_by)


class ImplausibleDedupError(RuntimeError):
    """A dedup step would remove more than its configured share of the input; nothing has been written."""


def check_removed_share(step: str, rows_in: int, rows_out: int, ceiling: float, key: str) -> None:
    """Stop (raise ImplausibleDedupError naming ``key``) when ``step`` removed more than ``ceiling`` of its input."""
    if rows_in and (rows_in - rows_out) / rows_in > ceiling:
        raise ImplausibleDedupError(
            f"{step} would remove {rows_in - rows_out:,} of {rows_in:,} rows ({(rows_in - rows_out) / rows_in:.0%}), "
            f"more than {key}={ceiling:g}: the embeddings are probably not meaningful (random weights, a broken model) "
            "or the threshold is too low. Nothing was written; raise the key to accept it."
        )


def refusal(model_id: str, embed: EmbedConfig) -> str | None:
    """Why embeddings of ``model_id`` must not drive semantic dedup (None: they may).

    A model whose registry entry builds random weights gives vectors that say nothing about content (with the
    tiny demo model they are nearly parallel, and a threshold of 0.95 merges distinct photos): never. A model the
    registry does not know (embeddings written by other tools) may; the share guard
    (:func:`check_removed_share`) still stops an implausible result.
    """
    path = registry_path(embed.registry)
    try:
        spec = load_registry(path).get(model_id)
    except RegistryError as e:
        return f"cannot read the model registry: {e}"
    if spec is not None and spec.random_init:
        return f"model {model_id!r} has random weights (random_init in {path}): its vectors say nothing about content"
    return None


def usable_embeddings(model_id: str, embed: EmbedConfig, what: str) -> bool:
    """Whether embeddings of ``model_id`` may drive the semantic dedup of ``what``; logs why not."""
    why = refusal(model_id, embed)
    if why is not None:
        log.warning("semantic dedup of %s skipped: %s", what, why)
    return why is None


def prune_embeddings(lakehouse: Lakehouse, table: Table, kept: DataFrame, id_col: str) -> None:
    """Delete the rows of embeddings ``table`` whose ``id_col`` is not in ``kept``, in one MERGE; with none to
    delete (a rerun) nothing is written.

    Keeps an embeddings table in step with the table it was made from after dedup removed rows from it; a row
    kept again by a later run is embedded again by the embed stage.
    """
    if not lakehouse.exists(table):
        return
    stale = lakehouse.read(table).select(id_col).join(kept.select(id_col), id_col, "left_anti").distinct()
    if stale.isEmpty():
        return
    condition = f"t.`{id_col}` = s.`{id_col}`"
    lakehouse.delta(table).alias("t").merge(stale.alias("s"), condition).whenMatchedDelete().execute()
