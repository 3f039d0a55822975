"""Semantic near-duplicates within k-means clusters, on planted embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from realsyn.semdedup import SemDedupParams, semantic_dedup, similar_pairs


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_similar_pairs_on_known_vectors() -> None:
    x = np.array([[1, 0, 0], [0.99, 0.141, 0], [0, 1, 0], [0, 0, 1], [0, 0.1, 0.995]], dtype=np.float32)
    src, dst, sim = similar_pairs(["e", "d", "c", "b", "a"], x, threshold=0.98, chunk_size=2)
    # cos(e, d) = 0.99 / |d| ~ 0.990; cos(b, a) = 0.995 / |a| ~ 0.995; every other pair is below 0.2.
    assert list(zip(src, dst, strict=True)) == [("a", "b"), ("d", "e")]
    assert np.allclose(sim, [0.995 / np.hypot(0.1, 0.995), 0.99 / np.hypot(0.99, 0.141)], atol=1e-5)


def test_planted_duplicates_are_grouped_and_distinct_items_are_not(spark: SparkSession) -> None:
    rng = np.random.default_rng(7)
    bases = _unit(rng.normal(size=(6, 32)))
    rows = []
    # Base i has i % 3 + 1 copies with tiny noise (cosine > 0.99), so groups of 1, 2 and 3 items.
    for i, base in enumerate(bases):
        for j in range(i % 3 + 1):
            v = _unit(base + rng.normal(scale=0.01, size=32))
            rows.append((f"b{i}-{j}", float(j), v.astype(np.float32).tolist()))
    df = spark.createDataFrame(rows, "id string, quality double, embedding array<float>")
    params = SemDedupParams(threshold=0.95, items_per_cluster=4, seed=0)
    got = semantic_dedup(df, "id", "embedding", [F.desc("quality")], params)
    result = {r["id"]: (r["component"], r["representative"]) for r in got.collect()}
    expected = {}
    for i in range(6):
        members = [f"b{i}-{j}" for j in range(i % 3 + 1)]
        for m in members:
            expected[m] = (members[0], members[-1])  # highest quality = last copy
    # Random 32-d directions have cosine far below 0.95, so only planted copies can pair up; k-means with
    # about 4 items per cluster keeps each tight group of copies in one cluster.
    assert result == expected


def test_a_cluster_without_any_pair_keeps_every_item(spark: SparkSession) -> None:
    # One k-means cluster whose items are all far apart: the per-cluster search returns no pair at all.
    vectors = np.eye(5, dtype=np.float32)
    rows = [(f"i{k}", v.tolist()) for k, v in enumerate(vectors)]
    df = spark.createDataFrame(rows, "id string, embedding array<float>")
    got = semantic_dedup(df, "id", "embedding", [], SemDedupParams(threshold=0.99, items_per_cluster=10))
    assert sorted((r["id"], r["component"], r["representative"]) for r in got.collect()) == [
        (f"i{k}", f"i{k}", f"i{k}") for k in range(5)
    ]


def test_an_empty_input_has_no_duplicates(spark: SparkSession) -> None:
    df = spark.createDataFrame([], "id string, embedding array<float>")
    assert semantic_dedup(df, "id", "embedding", [], SemDedupParams()).count() == 0


def test_random_weight_models_never_drive_dedup() -> None:
    from realsyn.config_sections import EmbedConfig
    from realsyn.semdedup import refusal

    embed = EmbedConfig()  # conf/models.yaml
    assert "random weights" in (refusal("tiny-random", embed) or "")
    assert "random weights" in (refusal("vit-b-32-random", embed) or "")
    assert refusal("eva02-l-14", embed) is None
    assert refusal("made-elsewhere", embed) is None  # unknown to the registry: the share guard still applies


def test_an_implausible_share_removed_stops_the_run() -> None:
    from realsyn.semdedup import ImplausibleDedupError, check_removed_share

    check_removed_share("image semantic dedup", 239, 120, 0.5, "semantic_dedup.images.max_removed_share")
    with pytest.raises(
        ImplausibleDedupError, match=r"238 of 239 rows .*semantic_dedup\.images\.max_removed_share=0\.5"
    ):
        check_removed_share("image semantic dedup", 239, 1, 0.5, "semantic_dedup.images.max_removed_share")
