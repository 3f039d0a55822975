"""Embedding tables in Spark: which model's rows to use, which rows are usable, a hash sample, nearest centroids.

Shared by the stages that read embeddings (clustering, retrieval, image and sentence semantic dedup):
``resolve_model_id`` picks the model id a stage works on, ``usable_embeddings`` sets aside the rows whose vector
cannot be used (with a reason each), ``hash_uniform`` / ``hash_sample`` draw a sample that depends only on the ids,
and ``with_nearest`` labels every row with its nearest centroid(s). The UDFs read embeddings straight from Arrow
buffers (:mod:`udfs.vectors`), with no Python object per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from realsyn.config import ConfigError
from realsyn.contracts import Table
from realsyn.tables import Lakehouse
from udfs.vectors import arrow_matrix, assign, embedding_problems, top_p

_HASH_RANGE = 1 << 30


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


def hash_uniform(id_col: str, seed: int) -> Column:
    """A number in [0, 1) that depends only on the id and the seed: a sample that ignores partitioning."""
    return F.pmod(F.xxhash64(F.col(id_col), F.lit(seed)), F.lit(_HASH_RANGE)) / F.lit(float(_HASH_RANGE))


def sorted_matrix(table: pa.Table, id_col: str, embedding_col: str, dim: int) -> np.ndarray:
    """Embeddings ordered by id, so training does not depend on the order rows arrive in."""
    order = pc.sort_indices(table, sort_keys=[(id_col, "ascending")])
    return arrow_matrix(table.column(embedding_col).take(order), dim)


def hash_sample(rows: DataFrame, id_col: str, seed: int, fraction: float) -> pa.Table:
    """About ``fraction`` of ``rows`` chosen by the hash of their id (:func:`hash_uniform`), as Arrow on the
    driver; the whole (then small) input when a tiny fraction misses every row."""
    sample = rows.filter(hash_uniform(id_col, seed) < fraction).toArrow() if fraction < 1 else rows.toArrow()
    return sample if sample.num_rows else rows.toArrow()


def with_label(
    df: DataFrame, embedding_col: str, out_col: str, dim: int, label: Callable[[np.ndarray], np.ndarray]
) -> DataFrame:
    """``df`` plus the long column ``out_col``: ``label`` applied to each Arrow batch's (rows, ``dim``) embedding
    matrix, one label per row."""
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
        return with_label(df, embedding_col, out_col, centroids.shape[1], lambda x: assign(x, centroids)[0])
    schema = T.StructType([*df.schema.fields, T.StructField(out_col, T.LongType(), False)])
    dim = centroids.shape[1]

    def labelled(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.RecordBatch]:
        for batch in batches:
            idx, _ = top_p(arrow_matrix(batch.column(embedding_col), dim), centroids, p)
            rows = pa.array(np.repeat(np.arange(batch.num_rows), idx.shape[1]))
            yield batch.take(rows).append_column(out_col, pa.array(idx.reshape(-1), pa.int64()))

    return df.mapInArrow(labelled, schema)
