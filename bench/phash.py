"""Perceptual near-duplicate search (banded pHash, realsyn.stages.extract_images.phash_pairs) at two sizes:
near-linear growth.

Input: N uniformly random 64-bit hashes, of which 1% get a planted partner 1 to ``max_distance`` bits away
(the other 99% stand for distinct pictures). Random hashes are the hard case for banding: real pHashes of
photographs are spread out much the same way (distinct photographs differ in 28-36 of 64 bits), and hashing
100k real images would measure the decoder, not the search. Timed: the Spark search (band keys, grouping by
key, exact Hamming check inside each group) written to a parquet file, at N and 10 N, after one warm-up run.
Checked: every planted pair is found (recall 1.0). Side by side at N: a single-process all-pairs scan in
numpy (N^2 / 2 XOR + popcount), the quadratic baseline that banding avoids.

The last line is ``phash_scaling_exponent: <log(t(10 N) / t(N)) / log(10)>`` (1.0 = linear, 2.0 = quadratic).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np


def hashes_with_partners(n: int, max_distance: int, seed: int) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` distinct int64 hashes, 1% of them with a planted partner; returns (hashes, planted pairs)."""
    rng = np.random.default_rng(seed)
    n_pairs = n // 100
    base = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n - n_pairs, dtype=np.int64)
    flips = []
    for _ in range(n_pairs):
        bits = rng.choice(64, int(rng.integers(1, max_distance + 1)), replace=False)
        flips.append(sum(1 << int(b) for b in bits))
    partner = (base[:n_pairs].view(np.uint64) ^ np.array(flips, dtype=np.uint64)).view(np.int64)
    planted = {(int(min(a, b)), int(max(a, b))) for a, b in zip(base[:n_pairs], partner, strict=True)}
    return np.concatenate([base, partner]), planted


def all_pairs_seconds(h: np.ndarray, max_distance: int) -> tuple[float, int]:
    """Single-process brute force: every pair's Hamming distance, in row blocks; (seconds, pairs found)."""
    from udfs.images import hamming

    t = time.perf_counter()
    found = 0
    block = 256
    for start in range(0, h.size, block):
        d = hamming(h[start : start + block, None], h[None, :])
        rows = np.arange(start, min(start + block, h.size))[:, None]
        found += int(((d <= max_distance) & (np.arange(h.size)[None, :] > rows)).sum())
    return time.perf_counter() - t, found


def spark_search(spark: object, h: np.ndarray, max_distance: int, bands: int, out: str) -> tuple[float, set]:
    """Time realsyn.stages.extract_images.phash_pairs over ``h`` (written to parquet); (seconds, pairs found)."""
    import pandas as pd

    from realsyn.config_sections import ImagePerceptualDedupConfig
    from realsyn.stages.extract_images import phash_pairs

    cfg = ImagePerceptualDedupConfig(max_distance=max_distance, bands=bands)
    df = spark.createDataFrame(pd.DataFrame({"phash": h})).repartition(4).cache()  # type: ignore[attr-defined]
    df.count()
    t = time.perf_counter()
    phash_pairs(df, cfg).write.mode("overwrite").parquet(out)
    seconds = time.perf_counter() - t
    got = spark.read.parquet(out).collect()  # type: ignore[attr-defined]
    df.unpersist()
    return seconds, {(r["src"], r["dst"]) for r in got}


def main() -> None:
    """Run the benchmark and print the figures, the scaling exponent last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 5,000 (and 50,000) instead of 10,000")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--bands", type=int, default=3)
    args = parser.parse_args()
    n = 5_000 if args.quick else args.n

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from realsyn.config_sections import SparkConfig
    from realsyn.spark import get_spark

    spark = get_spark(
        SparkConfig(
            master="local[2]",
            conf={
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": "8",
                "spark.driver.memory": "6g",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
            },
        )
    )
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        warm, _ = hashes_with_partners(2_000, args.max_distance, 99)
        spark_search(spark, warm, args.max_distance, args.bands, f"{tmp}/warm")
        results = {}
        for size in (n, 10 * n):
            h, planted = hashes_with_partners(size, args.max_distance, size)
            seconds, found = spark_search(spark, h, args.max_distance, args.bands, f"{tmp}/p{size}")
            recall = len(planted & found) / len(planted)
            results[size] = seconds
            print(
                f"N={size:>8,}: banded search {seconds:7.2f} s, pairs found {len(found):,}, planted recall {recall:.3f}"
            )
        h, _ = hashes_with_partners(n, args.max_distance, n)
        brute, brute_found = all_pairs_seconds(h, args.max_distance)
        print(f"N={n:>8,}: single-process all-pairs numpy scan {brute:7.2f} s, pairs found {brute_found:,}")
        print(f"all-pairs at N={10 * n:,} would take ~{brute * 100:.0f} s (x100: quadratic)")
    exponent = math.log(results[10 * n] / results[n]) / math.log(10)
    print(f"phash_scaling_exponent: {exponent:.2f}")


if __name__ == "__main__":
    main()
