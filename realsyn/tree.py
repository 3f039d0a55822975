"""The k-means tree of :mod:`udfs.tree` in Spark: shipped to the tasks, written to and read from a centroids table.

``shipped`` makes a tree available inside Spark tasks (in the closure, or as a memory-mapped file once it is
large); ``centroids_frame`` and ``tree_from_centroids`` turn a tree into the rows of ``silver.sentence_centroids`` /
``silver.image_centroids`` and back. Clustering trains and writes trees; retrieval reads and descends them.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from realsyn.contracts import LEVEL_COARSE, LEVEL_LEAF, SILVER_SENTENCE_CENTROIDS
from udfs.tree import Tree
from udfs.vectors import arrow_matrix, matrix_column

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
