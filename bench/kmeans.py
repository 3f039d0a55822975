"""Our hierarchical k-means (realsyn.clustering on Spark) versus Spark MLlib KMeans, same K, same data.

Both run on the same local Spark session over the same parquet file of synthetic clustered embeddings (the
generator of bench/retrieval.py). MLlib is what a Spark user would pick: ``pyspark.ml.clustering.KMeans`` with
``distanceMeasure="cosine"``, its default k-means|| initialisation and ``maxIter`` 20, at K equal to the number
of leaves our tree ends up with (about n / leaf size: large K is where a pipeline like this one runs; the paper
has 2M clusters). MLlib's time grows with n K, ours with about n (a row costs sqrt(K)-order similarities in the
tree), so the ratio grows with K: the default n 200,000 at leaf size 100 gives K about 2,000; ``--n 100000``
gives K about 1,000. Each method runs ``--repeats`` times, alternating, and keeps its fastest run. Timed: training
plus the assignment of every row (ours: ``train_tree`` + ``assign_leaves``; MLlib: ``fit`` + ``transform``),
each written to a parquet file. Quality: mean cosine
distance of every point to the centroid it was assigned to (lower is better), computed in numpy from each
method's own assignment. For reference, faiss flat spherical k-means on one machine (all points, K centroids,
20 iterations) and its loss. Then time versus N for our method (``--scaling``): near-linear growth expected.

The last line is ``kmeans_speedup_vs_mllib: <MLlib seconds / our seconds>``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import local_spark, synthetic, write_parquet

from udfs.vectors import l2_normalize


def ids_to_rows(ids: np.ndarray) -> np.ndarray:
    """Row numbers from ids written by ``write_parquet`` (prefix + 8 digits)."""
    return np.array([int(i[1:]) for i in ids], dtype=np.int64)


def mean_distance(x: np.ndarray, centroids: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> float:
    """Mean of 1 - cos(x[row], centroid[label]) over the given assignment."""
    c = l2_normalize(centroids)
    return float(1.0 - np.mean(np.einsum("ij,ij->i", x[rows], c[labels]).astype(np.float64)))


def ours(spark: object, path: str, x: np.ndarray, leaf_size: int, tmp: str, tag: str) -> dict[str, float]:
    """Train + assign with realsyn.clustering; seconds, number of leaves, loss."""
    from realsyn.clustering import assign_leaves, train_tree
    from realsyn.config_sections import ClusterConfig

    df = spark.read.parquet(path)  # type: ignore[attr-defined]
    t = time.perf_counter()
    cfg = ClusterConfig(leaf_size=leaf_size)
    tree = train_tree(df, cfg, "sentence_id")
    out = f"{tmp}/ours_{tag}.parquet"
    assign_leaves(df, tree, "sentence_id", coarse_probe=cfg.assign_coarse_probe).select(
        "sentence_id", "leaf_id"
    ).write.parquet(out)
    seconds = time.perf_counter() - t
    got = spark.read.parquet(out).toPandas()  # type: ignore[attr-defined]
    loss = mean_distance(x, tree.leaves, ids_to_rows(got["sentence_id"].to_numpy()), got["leaf_id"].to_numpy())
    return {"seconds": seconds, "k": tree.n_leaves, "loss": loss}


def mllib(spark: object, path: str, x: np.ndarray, k: int, tmp: str, seed: int, tag: str) -> dict[str, float]:
    """Spark MLlib KMeans (cosine, k-means||, maxIter 20): fit + transform; seconds and loss."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    df = spark.read.parquet(path).select("sentence_id", array_to_vector(F.col("embedding")).alias("features"))  # type: ignore[attr-defined]
    t = time.perf_counter()
    model = KMeans(k=k, distanceMeasure="cosine", maxIter=20, seed=seed).fit(df)
    out = f"{tmp}/mllib_{tag}.parquet"
    model.transform(df).select("sentence_id", "prediction").write.parquet(out)
    seconds = time.perf_counter() - t
    got = spark.read.parquet(out).toPandas()  # type: ignore[attr-defined]
    centres = np.array(model.clusterCenters(), dtype=np.float32)
    loss = mean_distance(x, centres, ids_to_rows(got["sentence_id"].to_numpy()), got["prediction"].to_numpy())
    return {"seconds": seconds, "loss": loss}


def faiss_flat(x: np.ndarray, k: int, seed: int) -> dict[str, float]:
    """faiss spherical k-means on all points in one process (reference loss)."""
    import faiss

    t = time.perf_counter()
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, max_points_per_centroid=x.shape[0])
    km.train(x)
    _, labels = km.index.search(x, 1)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "loss": mean_distance(x, km.centroids, np.arange(x.shape[0]), labels[:, 0])}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k points, dim 64, scaling 10k/30k/100k")
    ap.add_argument("--n", type=int, default=200_000, help="points in the side-by-side comparison")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--leaf-size", type=int, default=100, help="K = n / leaf size: about 2,000 at the default n")
    ap.add_argument("--components", type=int, default=20_000)
    ap.add_argument("--scaling", default="100000,300000,1000000", help="N values for time versus N ('' skips)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (the fastest is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.leaf_size, args.scaling = 20_000, 64, 200, "10000,30000,100000"

    spark = local_spark("bench-kmeans")
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: start the JVM code paths and the Python workers once for both methods, untimed
        w, _, _ = synthetic(2_000, 1, args.dim, 200, args.seed + 2)
        warm = write_parquet(w, f"{tmp}/warm.parquet", "sentence_id", "s")
        ours(spark, warm, w, 100, tmp, "warm")
        mllib(spark, warm, w, 20, tmp, args.seed, "warm")
        x, _, _ = synthetic(args.n, 1, args.dim, args.components, args.seed)
        path = write_parquet(x, f"{tmp}/points.parquet", "sentence_id", "s")
        # Each method runs --repeats times, alternating, and keeps its fastest run: the JVM and the Python workers
        # warm up on the first (ours is short, so its first run is dominated by that warm-up; MLlib's is long).
        runs_a, runs_b = [], []
        for r in range(args.repeats):
            runs_a.append(ours(spark, path, x, args.leaf_size, tmp, f"main{r}"))
            runs_b.append(mllib(spark, path, x, int(runs_a[0]["k"]), tmp, args.seed, f"main{r}"))
        a, b = min(runs_a, key=lambda r: r["seconds"]), min(runs_b, key=lambda r: r["seconds"])
        k = int(a["k"])
        print(
            "  runs (s): ours "
            + ", ".join(f"{r['seconds']:.1f}" for r in runs_a)
            + "; MLlib "
            + ", ".join(f"{r['seconds']:.1f}" for r in runs_b)
        )
        f = faiss_flat(x, k, args.seed)
        print(f"data: {args.n} points, dim {args.dim}, {args.components} components; K = {k}")
        print(f"  ours (Spark, hierarchical): {a['seconds']:8.1f} s   mean cosine distance {a['loss']:.4f}")
        print(f"  Spark MLlib KMeans cosine:  {b['seconds']:8.1f} s   mean cosine distance {b['loss']:.4f}")
        print(f"  faiss flat (one process):   {f['seconds']:8.1f} s   mean cosine distance {f['loss']:.4f}")
        scaling = [int(n) for n in args.scaling.split(",") if n]
        if scaling:
            print("time versus N (ours, train + assign):")
            base = None
            for n in scaling:
                xs, _, _ = synthetic(n, 1, args.dim, args.components, args.seed + 1)
                p = write_parquet(xs, f"{tmp}/scale_{n}.parquet", "sentence_id", "s")
                r = ours(spark, p, xs, args.leaf_size, tmp, str(n))
                base = base or (n, r["seconds"])
                print(
                    f"  N={n:>9}: {r['seconds']:7.1f} s, K={int(r['k'])}, loss {r['loss']:.4f}, "
                    f"{r['seconds'] / base[1]:.2f}x the time of N={base[0]} for {n / base[0]:.1f}x the rows"
                )
    spark.stop()
    print(f"kmeans_loss_ours: {a['loss']:.4f}")
    print(f"kmeans_loss_mllib: {b['loss']:.4f}")
    print(f"kmeans_speedup_vs_mllib: {b['seconds'] / a['seconds']:.2f}")


if __name__ == "__main__":
    main()
