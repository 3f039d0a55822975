"""How a large k-means tree reaches the Spark tasks: inside the task closure versus as a memory-mapped file.

``realsyn.tree.shipped`` sends a tree whose leaves exceed ``INLINE_TREE_BYTES`` as an .npy file that every
executor memory-maps, instead of inside the pickled closure that every task unpickles. This benchmark times
``assign_leaves`` (descent of every row, written to parquet) over the same rows with the same tree both ways, in
one local Spark session, alternating, fastest of ``--repeats`` kept. The tree is random (unit vectors): only
its size matters here. Peak resident memory of the Python workers is not measured; with a file, the workers of
one executor share one copy in the page cache.

The last line is ``tree_file_vs_inline: <inline seconds / file seconds>`` (above 1: the file is faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import local_spark, write_parquet

from udfs.tree import Tree
from udfs.vectors import l2_normalize


def random_tree(coarse: int, fan: int, dim: int, seed: int) -> Tree:
    """A tree of ``coarse`` x ``fan`` random unit leaves under ``coarse`` random unit centroids."""
    rng = np.random.default_rng(seed)
    top = l2_normalize(rng.normal(size=(coarse, dim)).astype(np.float32))
    return Tree.from_parts(top, [l2_normalize(rng.normal(size=(fan, dim)).astype(np.float32)) for _ in range(coarse)])


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50k rows, 40k leaves")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--coarse", type=int, default=400, help="coarse clusters; leaves = coarse x fan")
    ap.add_argument("--fan", type=int, default=400)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.coarse, args.fan = 50_000, 200, 200

    import realsyn.tree
    from realsyn import clustering

    spark = local_spark("bench-tree-shipping")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(8 << 20))  # several tasks per core: several loads
    tree = random_tree(args.coarse, args.fan, args.dim, 0)
    rng = np.random.default_rng(1)
    x = l2_normalize(rng.normal(size=(args.rows, args.dim)).astype(np.float32))
    limit = realsyn.tree.INLINE_TREE_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        df = spark.read.parquet(write_parquet(x, f"{tmp}/rows.parquet", "sentence_id", "s"))
        tasks = df.rdd.getNumPartitions()

        def timed(inline: bool, tag: str) -> float:
            realsyn.tree.INLINE_TREE_BYTES = tree.leaves.nbytes if inline else 0
            try:
                started = time.perf_counter()
                out = clustering.assign_leaves(df, tree, "sentence_id", coarse_probe=3).select("sentence_id", "leaf_id")
                out.write.parquet(f"{tmp}/{tag}.parquet")
                return time.perf_counter() - started
            finally:
                realsyn.tree.INLINE_TREE_BYTES = limit

        timed(True, "warm-inline")
        timed(False, "warm-file")
        runs_inline, runs_file = [], []
        for r in range(args.repeats):
            runs_inline.append(timed(True, f"inline{r}"))
            runs_file.append(timed(False, f"file{r}"))
        same = spark.read.parquet(f"{tmp}/inline0.parquet").exceptAll(spark.read.parquet(f"{tmp}/file0.parquet"))
        assert same.isEmpty(), "the two ways gave different leaves"
    spark.stop()
    inline, mapped = min(runs_inline), min(runs_file)
    print(
        f"{args.rows} rows, {tasks} tasks; tree {tree.n_leaves} leaves x {args.dim} "
        f"({tree.leaves.nbytes / 1e6:.0f} MB of leaves)"
    )
    print("  inline (pickled closure) runs: " + ", ".join(f"{s:.1f}" for s in runs_inline) + " s")
    print("  memory-mapped file runs:       " + ", ".join(f"{s:.1f}" for s in runs_file) + " s")
    print(f"tree_file_vs_inline: {inline / mapped:.2f}")


if __name__ == "__main__":
    main()
