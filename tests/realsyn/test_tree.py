"""The k-means tree in Spark (realsyn.tree): rows of a centroids table and back, and the tree inside the tasks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import realsyn.tree
from realsyn.contracts import LEVEL_COARSE, LEVEL_LEAF
from realsyn.tree import centroids_frame, tree_from_centroids
from udfs.tree import Tree


def small_tree() -> Tree:
    """Coarse centroids e0 and e1 of R^4; leaves e0 and e2 under the first, e1 under the second."""
    eye = np.eye(4, dtype=np.float32)
    return Tree.from_parts(eye[:2], [eye[[0, 2]], eye[[1]]])


def test_centroids_round_trip(spark: SparkSession) -> None:
    eye = np.eye(4, dtype=np.float32)
    tree = small_tree()
    frame = centroids_frame(spark, tree, "m", np.array([5, 7, 11]))
    back = tree_from_centroids(frame, "m")
    np.testing.assert_array_equal(back.coarse, tree.coarse)
    np.testing.assert_array_equal(back.leaves, tree.leaves)
    np.testing.assert_array_equal(back.parent, [0, 0, 1])
    rows = {(r["level"], r["centroid_id"]): (r["parent_id"], r["size"], r["vector"]) for r in frame.collect()}
    as_list = eye.tolist()
    assert rows == {
        (LEVEL_COARSE, 0): (None, 12, as_list[0]),
        (LEVEL_COARSE, 1): (None, 11, as_list[1]),
        (LEVEL_LEAF, 0): (0, 5, as_list[0]),
        (LEVEL_LEAF, 1): (0, 7, as_list[2]),
        (LEVEL_LEAF, 2): (1, 11, as_list[1]),
    }
    assert tree_from_centroids(frame, "other").n_leaves == 0


def test_centroids_that_are_not_a_tree_are_refused(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="2 leaf sizes for 3 leaves"):
        centroids_frame(spark, small_tree(), "m", np.array([5, 7]))
    frame = centroids_frame(spark, small_tree(), "m", np.array([5, 7, 11]))
    gap = frame.filter((F.col("level") != LEVEL_LEAF) | (F.col("centroid_id") != 1))  # leaves 0 and 2 only
    with pytest.raises(ValueError, match="not a tree with leaves numbered by parent"):
        tree_from_centroids(gap, "m")


def test_a_tree_reaches_the_tasks_inline_or_past_the_limit_as_a_mapped_file(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = small_tree()
    inline = realsyn.tree.shipped(spark, tree)
    assert inline() is tree  # on the driver: the tree itself
    monkeypatch.setattr(realsyn.tree, "INLINE_TREE_BYTES", 0)
    mapped = realsyn.tree.shipped(spark, tree)
    assert isinstance(mapped().leaves, np.memmap)

    def in_tasks(load: Callable[[], Tree]) -> list[tuple[str, list[list[float]], list[int]]]:
        """What two tasks see of the tree ``load`` returns: the type of its leaves, the leaves, the parents."""
        return (
            spark.sparkContext.parallelize(range(2), 2)
            .map(lambda _: (type(load().leaves).__name__, load().leaves.tolist(), load().parent.tolist()))
            .collect()
        )

    leaves = tree.leaves.tolist()
    assert in_tasks(inline) == [("ndarray", leaves, [0, 0, 1])] * 2
    assert in_tasks(mapped) == [("memmap", leaves, [0, 0, 1])] * 2
