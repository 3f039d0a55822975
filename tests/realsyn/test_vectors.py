"""Embedding tables in Spark (realsyn.vectors): the model to work on, unusable rows set aside, a hash sample that
depends only on the ids, and each row's nearest centroids."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from realsyn.config import ConfigError
from realsyn.contracts import SILVER_RETRIEVAL_REJECTS
from realsyn.tables import Lakehouse
from realsyn.vectors import hash_sample, resolve_model_id, sorted_matrix, usable_embeddings, with_nearest


def test_the_model_is_the_configured_one_else_the_only_one(spark: SparkSession) -> None:
    one = spark.createDataFrame([("a", "m1"), ("b", "m1")], "id string, model_id string")
    two = one.unionByName(spark.createDataFrame([("c", "m2")], "id string, model_id string"))
    assert resolve_model_id(one, None, "embed.model") == "m1"
    assert resolve_model_id(two, "m2", "embed.model") == "m2"
    assert resolve_model_id(one.limit(0), None, "embed.model") is None
    with pytest.raises(ConfigError, match=r"^retrieve\.embedding_model: the embeddings hold several models \(m1, m2"):
        resolve_model_id(two, None, "retrieve.embedding_model")


def test_unusable_embeddings_are_set_aside_with_a_reason_each(spark: SparkSession, lakehouse: Lakehouse) -> None:
    rows = spark.createDataFrame(
        [("a", [0.6, 0.8]), ("b", None), ("c", [1.0]), ("d", [0.0, 0.0]), ("e", [0.0, 1.0])],
        "image_id string, embedding array<float>",
    )
    earlier = spark.createDataFrame(
        [("x", "m", "null_embedding", ""), ("y", "other", "zero_vector", "")],
        "image_id string, model_id string, reason string, detail string",
    )
    lakehouse.overwrite(SILVER_RETRIEVAL_REJECTS, earlier)
    usable, n_rejected = usable_embeddings(lakehouse, rows, SILVER_RETRIEVAL_REJECTS, "image_id", "m", 2)
    assert n_rejected == 3
    assert sorted(r["image_id"] for r in usable.collect()) == ["a", "e"]
    # model m's rejects are replaced (x is gone); the other model's stay
    written = {tuple(r) for r in lakehouse.read(SILVER_RETRIEVAL_REJECTS).collect()}
    assert written == {
        ("b", "m", "null_embedding", ""),
        ("c", "m", "wrong_dimension", "length 1, expected 2"),
        ("d", "m", "zero_vector", ""),
        ("y", "other", "zero_vector", ""),
    }
    # nothing unusable: the rows come back as they are, and model m has no rejects left
    good = rows.filter(F.col("image_id").isin("a", "e"))
    usable, n_rejected = usable_embeddings(lakehouse, good, SILVER_RETRIEVAL_REJECTS, "image_id", "m", 2)
    assert usable is good and n_rejected == 0
    assert [r["image_id"] for r in lakehouse.read(SILVER_RETRIEVAL_REJECTS).collect()] == ["y"]


def test_a_hash_sample_depends_only_on_the_ids(spark: SparkSession) -> None:
    rows = [(f"r{i:03d}", [float(i), 1.0]) for i in range(200)]
    df = spark.createDataFrame(rows, "id string, embedding array<float>")
    shuffled = spark.createDataFrame(rows[::-1], "id string, embedding array<float>").repartition(3)
    sample = hash_sample(df.coalesce(1), "id", 7, 0.25)
    again = hash_sample(shuffled, "id", 7, 0.25)
    ids = sorted(sample.column("id").to_pylist())
    assert ids == sorted(again.column("id").to_pylist())
    assert 20 < len(ids) < 80 and ids != sorted(hash_sample(df, "id", 8, 0.25).column("id").to_pylist())
    # the sample's vectors in id order, whatever order its rows came in
    np.testing.assert_array_equal(sorted_matrix(again, "id", "embedding", 2)[:, 0], [int(i[1:]) for i in ids])
    assert hash_sample(df, "id", 7, 1.0).num_rows == 200
    assert hash_sample(df, "id", 7, 1e-12).num_rows == 200  # a fraction that misses every row: the whole input


def test_each_row_gets_its_nearest_centroids_best_first(spark: SparkSession) -> None:
    centroids = np.eye(3, dtype=np.float32)
    rows = [("a", [0.9, 0.4, 0.1]), ("b", [0.1, 0.2, 0.95]), ("c", [0.3, 0.9, 0.5])]
    df = spark.createDataFrame(rows, "id string, embedding array<float>").repartition(2)
    one = sorted((r["id"], r["cluster"]) for r in with_nearest(df, centroids, "embedding", "cluster").collect())
    assert one == [("a", 0), ("b", 2), ("c", 1)]
    # p = 2: one row per each of the two nearest (semantic dedup's clusters_per_item), best first within a row.
    two = [(r["id"], r["cluster"]) for r in with_nearest(df, centroids, "embedding", "cluster", p=2).collect()]
    assert sorted(two) == [("a", 0), ("a", 1), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    assert [c for i, c in two if i == "c"] == [1, 2]
