"""Top-k retrieval as a join over leaf ids: hand-worked cases, equality with brute force, reruns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

import realsyn.stages.retrieve
from realsyn.clustering import train_tree
from realsyn.config_sections import ClusterConfig, Config, RetrieveConfig
from realsyn.contracts import (
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_RETRIEVAL,
    SILVER_RETRIEVAL_REJECTS,
    SILVER_SENTENCE_EMBEDDINGS,
)
from realsyn.stages.cluster_sentences import run_cluster_sentences
from realsyn.stages.retrieve import retrieve, run_retrieve
from realsyn.tables import Lakehouse
from tests.support.tables import write_foreign
from udfs.tree import Tree, calibrate_margin, descend, probe_counts
from udfs.vectors import l2_normalize

RESULT_COLUMNS = "image_id string, rank int, sentence_id string, score float, leaf_id long"


def hand_tree() -> Tree:
    """Coarse (1,0) with leaves (1,0) and (0.8,0.6); coarse (-1,0) with leaf (-1,0)."""
    coarse = np.array([[1, 0], [-1, 0]], np.float32)
    return Tree.from_parts(coarse, [np.array([[1, 0], [0.8, 0.6]], np.float32), np.array([[-1, 0]], np.float32)])


def hand_sentences(spark: SparkSession) -> DataFrame:
    rows = [
        ("a", [1.0, 0.0], 0),
        ("b", [0.6, 0.8], 1),
        ("c", [0.8, 0.6], 1),
        ("e", [0.0, 1.0], 1),
        ("d", [-1.0, 0.0], 2),
    ]
    return spark.createDataFrame(rows, "sentence_id string, embedding array<float>, leaf_id long")


def hand_images(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([("q1", [0.8, 0.6]), ("q2", [-0.6, 0.8])], "image_id string, embedding array<float>")


def test_hand_worked_top_k(spark: SparkSession) -> None:
    # q1 = (0.8, 0.6): coarse 0 (0.8 > -0.8); leaves 1 (1.0) then 0 (0.8).
    #   sentences: c 1.0, b 0.96, a 0.8, e 0.6
    # q2 = (-0.6, 0.8): coarse 1 (0.6 > -0.6); only leaf 2, whose one sentence d scores 0.6 (< k rows)
    cfg = RetrieveConfig(top_k=3, probe_leaves=2, coarse_probe=1, probe_spread=1)
    got = retrieve(hand_images(spark), hand_sentences(spark), hand_tree(), cfg)[0]
    expected = spark.createDataFrame(
        [("q1", 1, "c", 1.0, 1), ("q1", 2, "b", 0.96, 1), ("q1", 3, "a", 0.8, 0), ("q2", 1, "d", 0.6, 2)],
        RESULT_COLUMNS,
    )
    assertDataFrameEqual(got, expected, rtol=1e-6)

    # one probed leaf: q1 only sees leaf 1 (c, b, e); chunks of one sentence and one image change nothing
    narrow = RetrieveConfig(
        top_k=3, probe_leaves=1, coarse_probe=2, max_group_sentences=1, max_group_images=1, probe_spread=1
    )
    got = retrieve(hand_images(spark), hand_sentences(spark), hand_tree(), narrow)[0]
    expected = spark.createDataFrame(
        [("q1", 1, "c", 1.0, 1), ("q1", 2, "b", 0.96, 1), ("q1", 3, "e", 0.6, 1), ("q2", 1, "d", 0.6, 2)],
        RESULT_COLUMNS,
    )
    assertDataFrameEqual(got, expected, rtol=1e-6)


@dataclass
class Clustered:
    """400 sentences around 12 random centres in 16 dimensions, 60 images from the same centres, a tree of ~16
    leaves trained on the sentences, and each sentence's leaf."""

    s: np.ndarray
    q: np.ndarray
    sent_ids: list[str]
    images: DataFrame
    tree: Tree
    leaf_ids: np.ndarray
    with_leaves: DataFrame

    @staticmethod
    def make(spark: SparkSession) -> Clustered:
        rng = np.random.default_rng(11)
        centres = l2_normalize(rng.normal(size=(12, 16)))
        s = l2_normalize(centres[rng.integers(0, 12, 400)] + 0.4 * rng.normal(size=(400, 16)))
        q = l2_normalize(centres[rng.integers(0, 12, 60)] + 0.4 * rng.normal(size=(60, 16)))
        sent_ids = [f"s{i:03d}" for i in range(len(s))]
        sentences = spark.createDataFrame(
            list(zip(sent_ids, s.tolist(), strict=True)), "sentence_id string, embedding array<float>"
        )
        images = spark.createDataFrame(
            [(f"i{i:03d}", v) for i, v in enumerate(q.tolist())], "image_id string, embedding array<float>"
        )
        tree = train_tree(sentences, ClusterConfig(leaf_size=25, coarse_clusters=4), "sentence_id")
        leaf_ids = descend(s, tree, 1, 1)[0][:, 0]  # any one leaf per sentence will do
        with_leaves = spark.createDataFrame(
            list(zip(sent_ids, s.tolist(), leaf_ids.tolist(), strict=True)),
            "sentence_id string, embedding array<float>, leaf_id long",
        )
        return Clustered(s, q, sent_ids, images, tree, leaf_ids, with_leaves)


def test_adaptive_probing_probes_the_calibrated_leaves(spark: SparkSession) -> None:
    case = Clustered.make(spark)
    cfg = RetrieveConfig(top_k=3, probe_leaves=4, probe_spread=2, coarse_probe=4, max_group_sentences=9)
    assert cfg.probe_bounds == (2, 8)
    got = retrieve(case.images, case.with_leaves, case.tree, cfg)[0].toPandas().sort_values(["image_id", "rank"])

    # the reference: the margin that gives these 60 images 4 leaves on average, then brute force over the leaves
    # each image probes
    leaves, scores, _ = descend(case.q, case.tree, 8, 4)
    counts = probe_counts(scores, calibrate_margin(scores, 4, 2, 8), 2, 8)
    assert counts.min() < counts.max() and counts.mean() <= 4  # images differ in how many leaves they probe

    def reference(n_leaves: np.ndarray) -> list[str]:
        out = []
        for i, n in enumerate(n_leaves):
            sims = np.where(np.isin(case.leaf_ids, leaves[i, :n]), case.s @ case.q[i], -np.inf)
            out += [case.sent_ids[j] for j in np.argsort(-sims, kind="stable")[:3] if np.isfinite(sims[j])]
        return out

    assert got["sentence_id"].tolist() == reference(counts)

    # a spread of 1 probes exactly probe_leaves everywhere
    fixed = RetrieveConfig(top_k=3, probe_leaves=4, probe_spread=1, coarse_probe=4)
    got = retrieve(case.images, case.with_leaves, case.tree, fixed)[0].toPandas().sort_values(["image_id", "rank"])
    assert got["sentence_id"].tolist() == reference(np.full(len(case.q), 4))


@pytest.mark.parametrize("plan_sample", [None, 10])
def test_all_leaves_probed_equals_brute_force(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch, plan_sample: int | None
) -> None:
    if plan_sample is not None:  # chunks planned from the probes of ~10 of the 60 images: the same result
        monkeypatch.setattr(realsyn.stages.retrieve, "PLAN_SAMPLE_IMAGES", plan_sample)
    case = Clustered.make(spark)
    s, q, sent_ids, images, tree, with_leaves = case.s, case.q, case.sent_ids, case.images, case.tree, case.with_leaves
    leaf_ids = case.leaf_ids.tolist()
    cfg = RetrieveConfig(
        top_k=3, probe_leaves=tree.n_leaves, coarse_probe=4, max_group_sentences=7, max_group_images=5, probe_spread=1
    )
    got = retrieve(images, with_leaves, tree, cfg)[0].toPandas().sort_values(["image_id", "rank"])
    sims = q @ s.T
    best = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    expected_ids = [sent_ids[j] for j in best.ravel()]
    assert got["image_id"].tolist() == [f"i{i:03d}" for i in range(60) for _ in range(3)]
    assert got["rank"].tolist() == [1, 2, 3] * 60
    assert got["sentence_id"].tolist() == expected_ids
    np.testing.assert_allclose(got["score"], np.take_along_axis(sims, best, axis=1).ravel(), rtol=1e-5)
    assert got["leaf_id"].tolist() == [leaf_ids[j] for j in best.ravel()]


def test_a_sampled_plan_loses_no_leaf(spark: SparkSession, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each image probes 2 of ~16 leaves; the plan counts the probes of ~5 of 60 images, so some leaves are probed
    # only by images outside the sample: their sentences must still be scored.
    rng = np.random.default_rng(5)
    centres = l2_normalize(rng.normal(size=(16, 8)))
    s = l2_normalize(centres[rng.integers(0, 16, 400)] + 0.2 * rng.normal(size=(400, 8)))
    q = l2_normalize(centres[rng.integers(0, 16, 60)] + 0.2 * rng.normal(size=(60, 8)))
    sentences = spark.createDataFrame(
        [(f"s{i:03d}", v) for i, v in enumerate(s.tolist())], "sentence_id string, embedding array<float>"
    )
    images = spark.createDataFrame(
        [(f"i{i:03d}", v) for i, v in enumerate(q.tolist())], "image_id string, embedding array<float>"
    )
    tree = train_tree(sentences, ClusterConfig(leaf_size=25, coarse_clusters=4), "sentence_id")
    leaf_ids = descend(s, tree, 1, 1)[0][:, 0].tolist()
    with_leaves = spark.createDataFrame(
        [(f"s{i:03d}", v, leaf) for i, (v, leaf) in enumerate(zip(s.tolist(), leaf_ids, strict=True))],
        "sentence_id string, embedding array<float>, leaf_id long",
    )
    cfg = RetrieveConfig(
        top_k=3, probe_leaves=2, coarse_probe=4, max_group_sentences=7, max_group_images=3, probe_spread=1
    )
    exact_plan = retrieve(images, with_leaves, tree, cfg)[0].collect()
    monkeypatch.setattr(realsyn.stages.retrieve, "PLAN_SAMPLE_IMAGES", 5)
    sampled_plan = retrieve(images, with_leaves, tree, cfg)[0]
    assert len(exact_plan) == 180
    assertDataFrameEqual(sampled_plan, exact_plan)


def test_prefiltered_join_equals_brute_force_when_the_axes_hold_the_data(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    axes = np.linalg.qr(rng.normal(size=(24, 6)))[0]  # everything lies in 6 of 24 dimensions
    s = l2_normalize((rng.normal(size=(300, 6)) @ axes.T).astype(np.float32))
    q = l2_normalize((rng.normal(size=(40, 6)) @ axes.T).astype(np.float32))
    sent_ids = [f"s{i:03d}" for i in range(len(s))]
    sentences = spark.createDataFrame(
        list(zip(sent_ids, s.tolist(), strict=True)), "sentence_id string, embedding array<float>"
    )
    tree = train_tree(sentences, ClusterConfig(leaf_size=30, coarse_clusters=3), "sentence_id")
    leaf_ids = descend(s, tree, 1, 1)[0][:, 0].tolist()
    with_leaves = spark.createDataFrame(
        list(zip(sent_ids, s.tolist(), leaf_ids, strict=True)),
        "sentence_id string, embedding array<float>, leaf_id long",
    )
    images = spark.createDataFrame(
        [(f"i{i:03d}", v) for i, v in enumerate(q.tolist())], "image_id string, embedding array<float>"
    )
    cfg = RetrieveConfig(
        top_k=3, probe_leaves=tree.n_leaves, coarse_probe=3, prefilter_dim=6, shortlist=4, probe_spread=1
    )
    got = retrieve(images, with_leaves, tree, cfg)[0].toPandas().sort_values(["image_id", "rank"])
    sims = q @ s.T
    best = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    assert got["sentence_id"].tolist() == [sent_ids[j] for j in best.ravel()]
    np.testing.assert_allclose(got["score"], np.take_along_axis(sims, best, axis=1).ravel(), rtol=1e-5)


def test_shortlist_must_hold_top_k() -> None:
    with pytest.raises(ValueError, match=r"retrieve\.shortlist"):
        RetrieveConfig(top_k=5, shortlist=4, prefilter_dim=64)
    assert RetrieveConfig(top_k=5, shortlist=4, prefilter_dim=0).shortlist == 4  # no prefilter, no shortlist


def test_probe_bounds_follow_the_spread() -> None:
    assert RetrieveConfig(probe_leaves=44, probe_spread=2).probe_bounds == (22, 88)
    assert RetrieveConfig(probe_leaves=45, probe_spread=1.5).probe_bounds == (30, 68)
    assert RetrieveConfig(probe_leaves=3, probe_spread=1).probe_bounds == (3, 3)
    assert RetrieveConfig(probe_leaves=1, probe_spread=4).probe_bounds == (1, 4)
    with pytest.raises(ValueError, match="probe_spread"):
        RetrieveConfig(probe_spread=0.5)


def test_retrieval_runs_where_the_device_policy_says(spark: SparkSession) -> None:
    import torch

    cfg = RetrieveConfig(top_k=3, probe_leaves=2, coarse_probe=1, probe_spread=1)
    auto = retrieve(hand_images(spark), hand_sentences(spark), hand_tree(), cfg.model_copy(update={"device": "auto"}))[
        0
    ]
    # the hand-worked answer of test_hand_worked_top_k, on the tasks' GPU where there is one, else the CPU
    expected = spark.createDataFrame(
        [("q1", 1, "c", 1.0, 1), ("q1", 2, "b", 0.96, 1), ("q1", 3, "a", 0.8, 0), ("q2", 1, "d", 0.6, 2)],
        RESULT_COLUMNS,
    )
    assertDataFrameEqual(auto, expected, rtol=1e-6)
    if torch.cuda.is_available():
        return
    # "cuda" reaches the tasks that descend the tree: without a GPU they stop, naming the key
    cuda = cfg.model_copy(update={"device": "cuda"})
    with pytest.raises(Exception, match=r"retrieve\.device: device is 'cuda' but no CUDA device"):
        retrieve(hand_images(spark), hand_sentences(spark), hand_tree(), cuda)[0].collect()


def test_empty_images_give_no_rows(spark: SparkSession) -> None:
    images = spark.createDataFrame([], "image_id string, embedding array<float>")
    got = retrieve(images, hand_sentences(spark), hand_tree(), RetrieveConfig())[0]
    assert got.collect() == []


def embedding_table(spark: SparkSession, key: str, x: np.ndarray, model_id: str) -> DataFrame:
    rows = [(f"{key[0]}{i:03d}", model_id, [float(v) for v in vec]) for i, vec in enumerate(x)]
    return spark.createDataFrame(rows, f"{key} string, model_id string, embedding array<float>")


def test_run_retrieve_end_to_end_and_rerun(spark: SparkSession, lakehouse: Lakehouse) -> None:
    cfg = Config(
        storage=lakehouse.storage,
        cluster_sentences=ClusterConfig(leaf_size=10, coarse_clusters=2),
        retrieve=RetrieveConfig(top_k=2, probe_leaves=2, coarse_probe=2, probe_spread=1),
    )
    assert run_retrieve(lakehouse, cfg).rows == 0  # nothing there yet
    assert not lakehouse.exists(SILVER_RETRIEVAL)

    # four well separated directions, ten sentences around each; every image sits on one direction
    rng = np.random.default_rng(2)
    axes = np.eye(8, dtype=np.float32)[:4]
    s = l2_normalize(np.repeat(axes, 10, axis=0) + 0.05 * rng.normal(size=(40, 8)))
    q = l2_normalize(axes[[0, 1, 2, 3, 0]] + 0.05 * rng.normal(size=(5, 8)))
    lakehouse.overwrite(SILVER_SENTENCE_EMBEDDINGS, embedding_table(spark, "sentence_id", s, "m"))
    unusable = spark.createDataFrame(
        [("x-null", "m", None), ("x-short", "m", [1.0] * 7), ("x-nan", "m", [float("nan")] * 8)],
        "image_id string, model_id string, embedding array<float>",
    )
    # Vectors the embed stage would never write (its table refuses a null), as another tool might have written them.
    write_foreign(lakehouse, SILVER_IMAGE_EMBEDDINGS, embedding_table(spark, "image_id", q, "m").unionByName(unusable))
    run_cluster_sentences(lakehouse, cfg)
    summary = run_retrieve(lakehouse, cfg)
    assert (summary.model_id, summary.images, summary.sentences, summary.rows) == ("m", 5, 40, 10)
    rejects = lakehouse.read(SILVER_RETRIEVAL_REJECTS).select("image_id", "model_id", "reason").collect()
    assert sorted(tuple(r) for r in rejects) == [
        ("x-nan", "m", "non_finite_embedding"),
        ("x-null", "m", "null_embedding"),
        ("x-short", "m", "wrong_dimension"),
    ]

    table = lakehouse.read(SILVER_RETRIEVAL)
    assert [(f.name, f.dataType) for f in table.schema.fields] == [
        (f.name, f.dataType) for f in SILVER_RETRIEVAL.schema.fields
    ]
    got = table.toPandas().sort_values(["image_id", "rank"])
    sims = q @ s.T
    best = np.argsort(-sims, axis=1, kind="stable")[:, :2]
    assert got["sentence_id"].tolist() == [f"s{j:03d}" for j in best.ravel()]
    assert got["image_id"].tolist() == [f"i{i:03d}" for i in range(5) for _ in range(2)]

    # a rerun replaces the model's rows with identical ones: no duplicates
    snapshot = table.toPandas()
    assert run_retrieve(lakehouse, cfg) == summary
    assertDataFrameEqual(lakehouse.read(SILVER_RETRIEVAL), spark.createDataFrame(snapshot, table.schema))
    assert lakehouse.read(SILVER_RETRIEVAL).groupBy("image_id", "rank").count().filter(F.col("count") > 1).count() == 0
    assert lakehouse.read(SILVER_RETRIEVAL_REJECTS).count() == 3
