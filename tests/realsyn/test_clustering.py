"""Hierarchical k-means in Spark: planted clusters, skew, tiny and empty inputs, reruns."""

from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

import realsyn.tree
from realsyn import clustering
from realsyn.clustering import (
    assign_leaves,
    boundary_pass,
    coarse_cluster_count,
    refine_tree,
    train_tree,
)
from realsyn.config import ConfigError
from realsyn.config_sections import ClusterConfig, Config
from realsyn.contracts import (
    FUNNEL,
    LEVEL_LEAF,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_SENTENCE_CENTROIDS,
    SILVER_SENTENCE_CLUSTER_REJECTS,
    SILVER_SENTENCE_CLUSTERS,
    SILVER_SENTENCE_EMBEDDINGS,
)
from realsyn.stages.cluster_images import run_cluster_images
from realsyn.stages.cluster_sentences import run_cluster_sentences
from realsyn.tables import Lakehouse
from tests.support.tables import write_foreign
from udfs.kmeans import refined, spherical_kmeans, sums_by_label
from udfs.tree import Tree, boundary_rows, descend, nearest_leaf
from udfs.vectors import l2_normalize, mean_cosine_distance

DIM = 12


def planted_tree_points(
    sizes: list[list[int]], noise: float = 0.03, tilt: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Points in ``len(sizes)`` topics (orthogonal axes), each split into sub-clusters of the given sizes.

    Sub-cluster j of topic t sits at axis t tilted by ``tilt`` towards axis ``len(sizes) + j``. Returns the points
    and a label "t/j" per point.
    """
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for t, subs in enumerate(sizes):
        for j, n in enumerate(subs):
            centre = np.zeros(DIM)
            centre[t] = 1.0
            centre[len(sizes) + j] = tilt
            points.append(centre + noise * rng.normal(size=(n, DIM)))
            labels += [f"{t}/{j}"] * n
    return l2_normalize(np.concatenate(points)), labels


def embeddings_df(spark: SparkSession, x: np.ndarray, prefix: str = "s", model_id: str | None = None) -> DataFrame:
    rows = [(f"{prefix}{i:04d}", [float(v) for v in vec]) for i, vec in enumerate(x)]
    df = spark.createDataFrame(rows, "sentence_id string, embedding array<float>")
    return df if model_id is None else df.withColumn("model_id", F.lit(model_id))


def leaf_partition(assigned: DataFrame, labels: list[str]) -> set[tuple[str, int]]:
    by_id = {r["sentence_id"]: int(r["leaf_id"]) for r in assigned.collect()}
    return {(labels[int(sid[1:])], leaf) for sid, leaf in by_id.items()}


def test_planted_two_level_clusters_are_recovered(spark: SparkSession) -> None:
    x, labels = planted_tree_points([[40, 40], [40, 40], [40, 40]])
    cfg = ClusterConfig(leaf_size=40, coarse_clusters=3, seed=1)
    df = embeddings_df(spark, x).repartition(2)
    tree = train_tree(df, cfg, "sentence_id")
    assert tree.coarse.shape == (3, DIM)
    assert tree.n_leaves == 6
    np.testing.assert_array_equal(np.bincount(tree.parent), [2, 2, 2])
    pairs = leaf_partition(assign_leaves(df, tree, "sentence_id"), labels)
    # one leaf per planted sub-cluster and one planted sub-cluster per leaf
    assert len(pairs) == 6
    assert len({label for label, _ in pairs}) == 6
    assert len({leaf for _, leaf in pairs}) == 6
    # sibling sub-clusters share a coarse parent
    parent_of = {label: int(tree.parent[leaf]) for label, leaf in pairs}
    assert all(parent_of[f"{t}/0"] == parent_of[f"{t}/1"] for t in range(3))
    assert len({parent_of[f"{t}/0"] for t in range(3)}) == 3


def test_skewed_coarse_clusters_get_leaves_in_proportion(spark: SparkSession) -> None:
    # one big topic with four close sub-clusters, one small topic, one tiny topic: the coarse level keeps the
    # topics apart (splitting the big topic gains less than separating the tiny one), the fine level gives
    # each topic one leaf per ~leaf_size rows
    x, labels = planted_tree_points([[60, 60, 60, 60], [30], [10]], noise=0.01, tilt=0.15)
    cfg = ClusterConfig(leaf_size=60, coarse_clusters=3, seed=0)
    df = embeddings_df(spark, x)
    tree = train_tree(df, cfg, "sentence_id")
    assert sorted(np.bincount(tree.parent, minlength=3).tolist()) == [1, 1, 4]
    pairs = leaf_partition(assign_leaves(df, tree, "sentence_id"), labels)
    assert len(pairs) == 6 == len({leaf for _, leaf in pairs}) == len({label for label, _ in pairs})


def test_device_cuda_reaches_the_tasks_that_train_the_leaves(spark: SparkSession) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: cuda resolves to it")
    # on a machine without a GPU the tasks that train the leaves stop, naming the key
    x, _ = planted_tree_points([[40, 40], [40, 40]])
    cfg = ClusterConfig(leaf_size=40, coarse_clusters=2, device="cuda")
    with pytest.raises(Exception, match=r"cluster_images\.device: device is 'cuda' but no CUDA device"):
        train_tree(embeddings_df(spark, x), cfg, "sentence_id", section="cluster_images")


def test_empty_input_gives_an_empty_tree(spark: SparkSession) -> None:
    df = spark.createDataFrame([], "sentence_id string, embedding array<float>")
    tree = train_tree(df, ClusterConfig(), "sentence_id")
    assert tree.n_leaves == 0
    assert coarse_cluster_count(1_000_000, ClusterConfig(leaf_size=400)) == 50


def write_embeddings(lakehouse: Lakehouse, df: DataFrame) -> None:
    """``df`` as silver.sentence_embeddings, unchecked: some tests hold rows (a null vector) that the embed stage
    never writes and its table refuses, as another tool might have written them."""
    write_foreign(lakehouse, SILVER_SENTENCE_EMBEDDINGS, df.select("sentence_id", "model_id", "embedding"))


def config(lakehouse: Lakehouse, **cluster: object) -> Config:
    return Config(storage=lakehouse.storage, cluster_sentences=ClusterConfig(**cluster))  # type: ignore[arg-type]


def test_run_cluster_sentences_is_retry_safe_and_incremental(spark: SparkSession, lakehouse: Lakehouse) -> None:
    x, labels = planted_tree_points([[40, 40], [40]])
    all_rows = embeddings_df(spark, x, model_id="clip-test")
    write_embeddings(lakehouse, all_rows.filter(F.col("sentence_id") != "s0000"))
    cfg = config(lakehouse, leaf_size=40, coarse_clusters=2, seed=3)
    first = run_cluster_sentences(lakehouse, cfg)
    assert (first.model_id, first.rows, first.coarse_clusters, first.leaves) == ("clip-test", 119, 2, 3)
    centroids_1 = lakehouse.read(SILVER_SENTENCE_CENTROIDS).toPandas()
    clusters_1 = lakehouse.read(SILVER_SENTENCE_CLUSTERS).toPandas()
    assert sorted(clusters_1["sentence_id"]) == [f"s{i:04d}" for i in range(1, 120)]
    assert set(clusters_1["model_id"]) == {"clip-test"}
    assert len(leaf_partition(spark.createDataFrame(clusters_1), labels)) == 3
    leaf_sizes = centroids_1[centroids_1["level"] == LEVEL_LEAF]["size"].tolist()
    assert sorted(leaf_sizes) == [39, 40, 40]

    # a forced retrain (as after a crash) rewrites identical tables without duplicates
    retrain = config(lakehouse, leaf_size=40, coarse_clusters=2, seed=3, retrain=True)
    assert run_cluster_sentences(lakehouse, retrain) == first
    assertDataFrameEqual(lakehouse.read(SILVER_SENTENCE_CLUSTERS), spark.createDataFrame(clusters_1))
    centroids_2 = lakehouse.read(SILVER_SENTENCE_CENTROIDS).toPandas()
    key = ["level", "centroid_id"]
    a, b = centroids_1.sort_values(key).reset_index(drop=True), centroids_2.sort_values(key).reset_index(drop=True)
    assert a.drop(columns="vector").equals(b.drop(columns="vector"))
    assert all(np.array_equal(u, v) for u, v in zip(a["vector"], b["vector"], strict=True))

    # a new sentence joins the kept tree; rows already there are untouched; a rerun adds nothing
    write_embeddings(lakehouse, all_rows)
    summary = run_cluster_sentences(lakehouse, cfg)
    assert (summary.trained, summary.newly_assigned) == (False, 1)
    after = lakehouse.read(SILVER_SENTENCE_CLUSTERS).toPandas().set_index("sentence_id")["leaf_id"]
    assert after["s0000"] == after["s0001"]  # same planted sub-cluster
    assert after.drop("s0000").sort_index().equals(clusters_1.set_index("sentence_id")["leaf_id"].sort_index())
    assert run_cluster_sentences(lakehouse, cfg).newly_assigned == 0
    assert lakehouse.read(SILVER_SENTENCE_CLUSTERS).count() == 120


def test_unusable_embeddings_become_rejects_and_the_rest_is_clustered(
    spark: SparkSession, lakehouse: Lakehouse
) -> None:
    x, labels = planted_tree_points([[40, 40], [40]])
    good = embeddings_df(spark, x, model_id="clip-test")
    nan, inf = float("nan"), float("inf")
    bad = spark.createDataFrame(
        [
            ("b-null", None),
            ("b-short", [1.0] * (DIM - 1)),
            ("b-long", [0.1] * (DIM + 1)),
            ("b-nan", [nan] + [0.1] * (DIM - 1)),
            ("b-inf", [inf, -inf] + [0.1] * (DIM - 2)),
            ("b-null-value", [None] + [0.1] * (DIM - 1)),
            ("b-zero", [0.0] * DIM),
        ],
        "sentence_id string, embedding array<float>",
    ).withColumn("model_id", F.lit("clip-test"))
    write_embeddings(lakehouse, good.unionByName(bad))
    cfg = config(lakehouse, leaf_size=40, coarse_clusters=2, seed=3)
    summary = run_cluster_sentences(lakehouse, cfg)
    assert (summary.rows, summary.rejected, summary.leaves, summary.newly_assigned) == (127, 7, 3, 120)
    clusters = lakehouse.read(SILVER_SENTENCE_CLUSTERS).toPandas()
    assert sorted(clusters["sentence_id"]) == [f"s{i:04d}" for i in range(120)]
    assert len(leaf_partition(spark.createDataFrame(clusters), labels)) == 3  # the planted clusters, untouched
    rejects = {
        r["sentence_id"]: (r["reason"], r["detail"]) for r in lakehouse.read(SILVER_SENTENCE_CLUSTER_REJECTS).collect()
    }
    assert rejects == {
        "b-null": ("null_embedding", ""),
        "b-short": ("wrong_dimension", f"length {DIM - 1}, expected {DIM}"),
        "b-long": ("wrong_dimension", f"length {DIM + 1}, expected {DIM}"),
        "b-nan": ("non_finite_embedding", f"1 of {DIM} values NaN, infinite or null"),
        "b-inf": ("non_finite_embedding", f"2 of {DIM} values NaN, infinite or null"),
        "b-null-value": ("non_finite_embedding", f"1 of {DIM} values NaN, infinite or null"),
        "b-zero": ("zero_vector", ""),
    }
    funnel = lakehouse.read(FUNNEL).filter((F.col("stage") == "cluster_sentences") & (F.col("model_id") == "clip-test"))
    funnel = funnel.collect()
    assert [(r["step"], r["rows_in"], r["rows_out"], r["rows_rejected"]) for r in funnel] == [
        ("usable_embedding", 127, 120, 7)
    ]

    # a rerun (kept tree) rewrites the same rejects, adds nothing; bad rows are judged against the tree's length
    assert run_cluster_sentences(lakehouse, cfg).newly_assigned == 0
    assert lakehouse.read(SILVER_SENTENCE_CLUSTER_REJECTS).count() == 7
    assert lakehouse.read(SILVER_SENTENCE_CLUSTERS).count() == 120

    # only unusable rows: rejects written, no tree trained
    only_bad = config(lakehouse, embedding_model="broken", retrain=True)
    write_embeddings(lakehouse, bad.withColumn("model_id", F.lit("broken")))
    summary = run_cluster_sentences(lakehouse, only_bad)
    assert (summary.rows, summary.rejected, summary.leaves, summary.trained) == (7, 7, 0, False)


def test_the_model_dimension_is_the_most_common_length(spark: SparkSession) -> None:
    df = spark.createDataFrame(
        [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [1.0, 0.0, 0.0]), ("d", None), ("e", None), ("f", None)],
        "sentence_id string, embedding array<float>",
    )
    assert clustering.embedding_dimension(df) == 2
    assert clustering.embedding_dimension(df.filter(F.col("embedding").isNull())) is None


def test_absent_or_empty_inputs_write_nothing(spark: SparkSession, lakehouse: Lakehouse) -> None:
    cfg = config(lakehouse)
    assert run_cluster_sentences(lakehouse, cfg).rows == 0
    write_embeddings(
        lakehouse, spark.createDataFrame([], "sentence_id string, model_id string, embedding array<float>")
    )
    summary = run_cluster_sentences(lakehouse, cfg)
    assert (summary.model_id, summary.rows, summary.leaves) == (None, 0, 0)
    assert not lakehouse.exists(SILVER_SENTENCE_CENTROIDS)
    assert not lakehouse.exists(SILVER_SENTENCE_CLUSTERS)


def test_several_models_need_a_configured_model_id(spark: SparkSession, lakehouse: Lakehouse) -> None:
    x = l2_normalize(np.eye(DIM)[:2])
    both = embeddings_df(spark, x, model_id="a").unionByName(embeddings_df(spark, x, model_id="b"))
    write_embeddings(lakehouse, both)
    with pytest.raises(ConfigError, match=r"cluster_sentences\.embedding_model"):
        run_cluster_sentences(lakehouse, config(lakehouse))
    summary = run_cluster_sentences(lakehouse, config(lakehouse, embedding_model="b", leaf_size=1))
    assert (summary.model_id, summary.rows, summary.leaves) == ("b", 2, 2)
    assert {r["model_id"] for r in lakehouse.read(SILVER_SENTENCE_CLUSTERS).collect()} == {"b"}


def two_topic_case() -> tuple[np.ndarray, Tree]:
    """Two noisy topics of two sub-clusters each, and a hand-made tree: one coarse centroid per topic, one leaf
    per sub-cluster tilted towards its axis."""
    x, _ = planted_tree_points([[30, 20], [25, 25]], noise=0.2, seed=4)
    e = np.eye(DIM, dtype=np.float32)
    tree = Tree.from_parts(
        e[:2], [l2_normalize(e[[0, 0]] + 0.5 * e[[2, 3]]), l2_normalize(e[[1, 1]] + 0.5 * e[[2, 3]])]
    )
    return x, tree


def test_distributed_refine_step_equals_the_one_machine_step(spark: SparkSession) -> None:
    x, tree = two_topic_case()
    ids, _, sums = sums_by_label(x, descend(x, tree, 1, 2)[0][:, 0])
    expected = refined(tree, ids, sums)
    got = refine_tree(embeddings_df(spark, x).repartition(3), tree, coarse_probe=2)
    np.testing.assert_allclose(got.leaves, expected.leaves, atol=1e-6)
    np.testing.assert_allclose(got.coarse, expected.coarse, atol=1e-6)
    assert not np.allclose(got.leaves, tree.leaves)


def test_a_boundary_pass_is_the_same_whatever_the_partitioning_and_lowers_the_loss(spark: SparkSession) -> None:
    x, tree = two_topic_case()
    cfg = ClusterConfig(assign_coarse_probe=2, boundary_margin=0.3, niter=5)
    rows, _, _ = boundary_rows(x, tree, 2, 0.3)
    assert np.unique(rows).size < rows.size  # some rows take part on both sides of the coarse split
    one = boundary_pass(embeddings_df(spark, x).coalesce(1), tree, cfg, "sentence_id", "embedding")
    got = boundary_pass(embeddings_df(spark, x).repartition(3), tree, cfg, "sentence_id", "embedding")
    np.testing.assert_allclose(got.leaves, one.leaves, atol=1e-6)
    np.testing.assert_allclose(got.coarse, one.coarse, atol=1e-6)
    assert not np.allclose(got.leaves, tree.leaves)
    assert np.mean(nearest_leaf(x, got, 2)[1]) > np.mean(nearest_leaf(x, tree, 2)[1])


def split_cluster_case() -> tuple[np.ndarray, np.ndarray, Tree]:
    """Four planted clusters on axes 0-3, and a tree whose coarse split went wrong: clusters 0 and 1 under
    coarse 0 share its one leaf, while coarse 1 (clusters 2 and 3) holds a spare leaf nearer to cluster 1."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(4), 50)
    e = np.eye(8, dtype=np.float32)
    x = l2_normalize(e[labels] + 0.02 * rng.normal(size=(labels.size, 8)))
    tree = Tree.from_parts(
        l2_normalize(e[[0, 2]] + e[[1, 3]]),
        [l2_normalize(e[[0]] + e[[1]]), l2_normalize(np.stack([e[1] + 0.6 * e[2], e[2], e[3]]))],
    )
    return x, labels, tree


def test_a_boundary_pass_lets_a_leaf_claim_a_planted_cluster_across_the_coarse_split(spark: SparkSession) -> None:
    x, labels, start = split_cluster_case()
    df = embeddings_df(spark, x).repartition(2)

    def partition(leaf_of: np.ndarray) -> set[tuple[int, int]]:
        """(planted cluster, leaf) pairs: one per cluster when every cluster has a leaf of its own."""
        return set(zip(labels.tolist(), leaf_of.tolist(), strict=True))

    assert partition(nearest_leaf(x, start, 1)[0]) == {(0, 0), (1, 0), (2, 2), (3, 3)}  # the training split
    cfg = ClusterConfig(assign_coarse_probe=2, boundary_margin=0.2, niter=10)
    tree = boundary_pass(df, start, cfg, "sentence_id", "embedding")
    leaf_of = nearest_leaf(x, tree, 2)[0]
    assert partition(leaf_of) == {(0, 0), (1, 1), (2, 2), (3, 3)}  # cluster 1 went to coarse 1's spare leaf
    means = l2_normalize(np.stack([x[labels == c].mean(axis=0) for c in range(4)]))
    np.testing.assert_allclose(tree.leaves, means, atol=1e-5)
    # probing only their nearest coarse cluster, cluster 1's rows never see coarse 1's leaves
    alone = boundary_pass(df, start, cfg.model_copy(update={"assign_coarse_probe": 1}), "sentence_id", "embedding")
    assert {leaf for c, leaf in partition(nearest_leaf(x, alone, 1)[0]) if c == 1} == {0}


def test_boundary_passes_take_back_most_of_what_the_coarse_split_costs(spark: SparkSession) -> None:
    # overlapping clusters in 16 dimensions: the two-level tree ends well above flat k-means, two passes near it
    rng = np.random.default_rng(3)
    centres = l2_normalize(rng.normal(size=(60, 16)))
    x = l2_normalize(centres[rng.integers(0, 60, 6000)] + 0.35 * rng.normal(size=(6000, 16)))
    df = embeddings_df(spark, x).repartition(2)

    def loss(tree: Tree) -> float:
        return float(1.0 - np.mean(nearest_leaf(x, tree, 4)[1]))

    cfg = ClusterConfig(leaf_size=100, coarse_clusters=6, assign_coarse_probe=4, boundary_passes=0)
    plain = train_tree(df, cfg, "sentence_id")
    passed = train_tree(df, cfg.model_copy(update={"boundary_passes": 2}), "sentence_id")
    flat = mean_cosine_distance(x, spherical_kmeans(x, passed.n_leaves, max_points_per_centroid=6000))
    assert loss(passed) - flat < 0.4 * (loss(plain) - flat)


def test_partial_sums_fold_to_the_same_totals_past_the_row_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3))
    labels = rng.integers(0, 6, size=40)
    parts = [sums_by_label(x[a : a + 8], labels[a : a + 8]) for a in range(0, 40, 8)]
    monkeypatch.setattr(clustering, "_MAX_PARTIAL_ROWS", 5)  # fold after almost every part
    (batch,) = clustering._summed((ids, sums) for ids, _, sums in parts)
    ids, _, sums = sums_by_label(x, labels)
    assert batch.column("leaf_id").to_pylist() == ids.tolist()
    np.testing.assert_allclose(np.array(batch.column("total").to_pylist()), sums)
    assert list(clustering._summed(iter([]))) == []


def test_leaves_are_assigned_and_refined_alike_with_a_tree_shipped_as_a_mapped_file(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, labels = planted_tree_points([[30, 30], [30]])
    df = embeddings_df(spark, x).repartition(2)
    tree = train_tree(df, ClusterConfig(leaf_size=30, coarse_clusters=2, refine_steps=0, seed=1), "sentence_id")
    inline = leaf_partition(assign_leaves(df, tree, "sentence_id"), labels)
    inline_step = refine_tree(df, tree, coarse_probe=2)
    monkeypatch.setattr(realsyn.tree, "INLINE_TREE_BYTES", 0)
    load = realsyn.tree.shipped(spark, tree)
    assert isinstance(load().leaves, np.memmap)
    np.testing.assert_array_equal(load().leaves, tree.leaves)
    assert leaf_partition(assign_leaves(df, tree, "sentence_id"), labels) == inline
    np.testing.assert_allclose(refine_tree(df, tree, coarse_probe=2).leaves, inline_step.leaves, atol=1e-6)


def test_run_cluster_images_writes_the_image_tree(spark: SparkSession, lakehouse: Lakehouse) -> None:
    x, labels = planted_tree_points([[30, 30], [30]])
    rows = embeddings_df(spark, x, prefix="i", model_id="clip-test").withColumnRenamed("sentence_id", "image_id")
    lakehouse.overwrite(SILVER_IMAGE_EMBEDDINGS, rows)
    cfg = Config(
        storage=lakehouse.storage,
        cluster_images=ClusterConfig(leaf_size=30, coarse_clusters=2, seed=1),  # type: ignore[arg-type]
    )
    summary = run_cluster_images(lakehouse, cfg)
    assert (summary.model_id, summary.rows, summary.coarse_clusters, summary.leaves) == ("clip-test", 90, 2, 3)
    clusters = lakehouse.read(SILVER_IMAGE_CLUSTERS).withColumnRenamed("image_id", "sentence_id")
    pairs = {(labels[int(r["sentence_id"][1:])], r["leaf_id"]) for r in clusters.collect()}
    assert len(pairs) == 3 == len({leaf for _, leaf in pairs})
    sizes = lakehouse.read(SILVER_IMAGE_CENTROIDS).filter(F.col("level") == LEVEL_LEAF).select("size").collect()
    assert sorted(r["size"] for r in sizes) == [30, 30, 30]
    assert not lakehouse.exists(SILVER_SENTENCE_CENTROIDS)
