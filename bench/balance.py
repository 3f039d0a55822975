"""Balance sampling and WebDataset export: time vs N, flatness of Zipf-skewed clusters, shard throughput.

1. Sampling in Spark (realsyn.stages.balance.selection_order + with_scales): N cluster assignments over K = N / 200
   leaves (the paper: ~200 images per cluster) with Zipf(1) cluster probabilities, ranked per leaf by a seeded
   hash and compared with a cap-20 scale and a water-filled target of N / 10 (the paper's 15M of 198M is 7.6%),
   counted to force the work. Timed at several N (default 1M, 2M, 5M, 10M; --quick 200k and 400k) after a warm-up;
   near-linear growth is the goal (exponent of t(N) ~ N^e printed). The quota kernels (udfs.balance) on the
   collected sizes are timed apart.
2. Zipf-skewed sizes: max / median leaf size before sampling and in each scale after it.
3. Concept-balanced scales (realsyn.concept_sampling) on pairs whose texts name Zipf(1)-distributed entries of a
   vocabulary of N / 100 two-word entries (--mentions of the three texts, default 1, name one entry each among
   filler words; the other texts are fillers alone): the whole MetaCLIP path (n-gram join of the texts with the
   vocabulary, counts, per-pair t*, the exact top-N cut) for a target of N / 10, and the inverse-frequency path for
   the same target, at --concept-rows (default 10M; --quick 200k). Rows/s and the share of matches held by the top
   1% of entries before and after.
4. Export: realsyn.stages.export.write_webdataset (Spark tasks writing shards) against a plain single-process tarfile
   writer over the same rows (read into the process with toArrow, then written), M small JPEGs
   (default 20,000; --quick 4,000), samples/s of each.

The last line is ``balance_max_over_median_after: <x>`` for the target scale (goal: <= 2).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def assignments(spark: object, n: int, leaves: int, seed: int) -> object:
    """A DataFrame of ``n`` (image_id, leaf_id) rows, cached and counted, with Zipf(1)-like leaf probabilities.

    leaf = floor((leaves + 1) ** u) - 1 for uniform u: P(leaf = i) = log((i + 2) / (i + 1)) / log(leaves + 1),
    about 1 / ((i + 1.5) log(leaves + 1)), the 1 / rank law of Zipf(1).
    """
    from pyspark.sql import functions as F

    x = F.exp(F.rand(seed) * F.lit(math.log(leaves + 1)))
    df = (
        spark.range(n)  # type: ignore[attr-defined]
        .select(
            F.sha2(F.col("id").cast("string"), 256).substr(1, 32).alias("image_id"),
            F.least(F.floor(x) - 1, F.lit(leaves - 1)).cast("long").alias("leaf_id"),
        )
        .cache()
    )
    df.count()
    return df


def sample_once(df: object, seed: int, n: int) -> tuple[float, float, dict[str, np.ndarray], np.ndarray]:
    """Time one sampling pass; returns (spark seconds, kernel seconds, per-scale leaf counts, sizes before)."""
    from pyspark.sql import functions as F

    from realsyn.config_sections import BalanceConfig
    from realsyn.stages.balance import scale_column, selection_order, with_scales
    from udfs.balance import capped, water_fill

    cfg = BalanceConfig(seed=seed, scales={"cap20": {"cap": 20}, "n10pct": {"target": n // 10}})  # type: ignore[arg-type]
    t = time.perf_counter()
    sizes_rows = df.groupBy("leaf_id").count().orderBy("leaf_id").collect()  # type: ignore[attr-defined]
    leaf_ids = [int(r["leaf_id"]) for r in sizes_rows]
    sizes = np.array([r["count"] for r in sizes_rows], np.int64)
    k0 = time.perf_counter()
    quotas = {"cap20": capped(sizes, 20), "n10pct": water_fill(sizes, n // 10, seed)}
    kernel = time.perf_counter() - k0
    ranked = with_scales(selection_order(df, None, cfg, "m"), leaf_ids, quotas)  # type: ignore[arg-type]
    counts = (
        ranked.groupBy("leaf_id")
        .agg(*[F.sum(F.col(scale_column(s)).cast("long")).alias(s) for s in quotas])
        .orderBy("leaf_id")
        .collect()
    )
    seconds = time.perf_counter() - t
    after = {s: np.array([int(r[s]) for r in counts], np.int64) for s in quotas}
    return seconds, kernel, after, sizes


def concept_pairs(spark: object, n: int, entries: int, seed: int, mentions: int = 1) -> tuple[object, object]:
    """(pairs with texts text1..text3 and syn_text, vocabulary of ``entries`` two-word entries), both cached.

    The first ``mentions`` texts name one entry each, drawn with Zipf(1) probabilities (as in :func:`assignments`),
    among filler words.
    """
    from pyspark.sql import functions as F

    def entry(salt: int) -> object:
        x = F.exp(F.rand(seed + salt) * F.lit(math.log(entries + 1)))
        i = F.least(F.floor(x) - 1, F.lit(entries - 1)).cast("long")
        return F.concat(F.lit("e"), i.cast("string"), F.lit(" k"), (i % 7).cast("string"))

    filler = [F.concat(F.lit("w"), F.floor(F.rand(seed + 100 + j) * 5000).cast("string")) for j in range(4)]
    texts = [
        F.concat_ws(" ", filler[0], filler[1], *([entry(t)] if t <= mentions else []), filler[2], filler[3]).alias(
            f"text{t}"
        )
        for t in (1, 2, 3)
    ]
    pairs = spark.range(n).select(  # type: ignore[attr-defined]
        F.sha2(F.col("id").cast("string"), 256).substr(1, 32).alias("image_id"),
        *texts,
        F.lit("a synthetic text").alias("syn_text"),
    )
    pairs = pairs.cache()
    pairs.count()
    vocab = spark.range(entries).select(  # type: ignore[attr-defined]
        F.concat(F.lit("e"), F.col("id").cast("string"), F.lit(" k"), (F.col("id") % 7).cast("string")).alias("entry")
    )
    return pairs, vocab


def concept_sampling_once(pairs: object, vocab_rows: object, target: int, seed: int) -> dict[str, tuple[float, ...]]:
    """Both concept paths over ``pairs``: {path: (seconds, rows kept, head share before, after)}."""
    from pyspark.sql import functions as F

    from realsyn.concept_sampling import (
        concept_keys,
        entry_keys,
        entry_matches,
        smallest,
        vocabulary,
        with_unmatched,
    )
    from udfs.concepts import head_share

    out = {}
    t = time.perf_counter()
    vocab, longest = vocabulary(vocab_rows, "entry")  # type: ignore[arg-type]
    matches = entry_matches(pairs, ["text1", "text2", "text3", "syn_text"], vocab, longest)  # type: ignore[arg-type]
    matches = with_unmatched(pairs, matches, "drop").localCheckpoint(eager=True)  # type: ignore[arg-type]
    match_s = time.perf_counter() - t
    for path, keyed in (("entries", entry_keys), ("concepts", concept_keys)):
        t = time.perf_counter()
        keys = keyed(pairs, matches, seed).localCheckpoint(eager=True)  # type: ignore[arg-type]
        cut = smallest(keys, target)
        member = cut.member() if cut is not None else F.lit(True)
        kept = keys.filter(member).select("image_id")
        counts = (
            matches.join(kept.withColumn("_in", F.lit(1)), "image_id", "left")
            .groupBy("concept")
            .agg(F.count(F.lit(1)).alias("before"), F.count("_in").alias("after"))
            .toPandas()
        )
        rows = kept.count()
        seconds = time.perf_counter() - t + (match_s if path == "entries" else 0.0)
        out[path] = (seconds, float(rows), head_share(counts["before"]), head_share(counts["after"]))
    return out


def export_rows(spark: object, lakehouse_root: str, m: int) -> tuple[object, object, object]:
    """A lakehouse with ``m`` small JPEGs in silver.images and matching gold-like rows; (lakehouse, rows, cfg)."""
    import pandas as pd
    from PIL import Image

    from realsyn.config_sections import Config
    from realsyn.contracts import SILVER_IMAGES
    from realsyn.tables import Lakehouse

    rng = np.random.default_rng(0)
    tiles = []
    for _ in range(64):  # 64 distinct pictures of ~4 KB, reused (export cost does not depend on pixels)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, "JPEG", quality=60)
        tiles.append(buf.getvalue())
    ids = [f"{i:032x}" for i in range(m)]
    images = pd.DataFrame({"image_id": ids, "content": [tiles[i % 64] for i in range(m)], "format": "JPEG"})
    images = images.reindex(columns=SILVER_IMAGES.columns).astype(object)  # the other columns null
    images = images.where(images.notna(), None)
    cfg = Config.model_validate({"storage": {"root": lakehouse_root}, "export": {"samples_per_shard": 1000}})
    lakehouse = Lakehouse(spark, cfg.storage)  # type: ignore[arg-type]
    frame = spark.createDataFrame(images, SILVER_IMAGES.schema)  # type: ignore[attr-defined]
    lakehouse.overwrite(SILVER_IMAGES, frame)
    rows = spark.createDataFrame(  # type: ignore[attr-defined]
        pd.DataFrame(
            {
                "image_id": ids,
                "text1": [f"retrieved sentence number {i} about a picture" for i in range(m)],
                "text2": "second text",
                "text3": "third text",
                "syn_text": [f"synthetic text {i}" for i in range(m)],
                "raw_image_url": [f"https://example.org/{i}.jpg" for i in range(m)],
                "url_redacted": False,
                "coarse_id": 0,
                "leaf_id": np.arange(m) % 97,
            }
        )
    ).cache()
    rows.count()  # type: ignore[attr-defined]
    return lakehouse, rows, cfg


def plain_tar_writer(lakehouse: object, rows: object, out: Path, per_shard: int) -> float:
    """Single process: read the same joined rows with toArrow, write the shards with tarfile; seconds."""
    from realsyn.contracts import SILVER_IMAGES
    from udfs.webdataset import sample_json

    t = time.perf_counter()
    content = lakehouse.read(SILVER_IMAGES).select("image_id", "content")  # type: ignore[attr-defined]
    table = rows.join(content, "image_id").orderBy("image_id").toArrow()  # type: ignore[attr-defined]
    out.mkdir(parents=True, exist_ok=True)
    tar = None
    for i, row in enumerate(table.to_pylist()):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / f"{i // per_shard:05d}.tar", "w")  # noqa: SIM115 (closed at the shard's end)
        row["key"] = row["image_id"]
        for name, data in (
            (f"{row['key']}.jpg", row["content"]),
            (f"{row['key']}.txt", row["text1"].encode()),
            (f"{row['key']}.json", sample_json(row)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))  # type: ignore[union-attr]
    if tar is not None:
        tar.close()
    return time.perf_counter() - t


def main() -> None:
    """Run the four parts and print the figures, the target scale's max / median last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 200k, 400k and 4,000 exported samples")
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000])
    parser.add_argument("--export-samples", type=int, default=20_000)
    parser.add_argument("--concept-rows", type=int, default=10_000_000)
    parser.add_argument("--mentions", type=int, default=1, choices=(1, 2, 3), help="texts of a pair naming an entry")
    args = parser.parse_args()
    sizes = [200_000, 400_000] if args.quick else args.sizes
    m = 4_000 if args.quick else args.export_samples
    concept_rows = 200_000 if args.quick else args.concept_rows

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from realsyn.config_sections import SparkConfig
    from realsyn.spark import get_spark
    from realsyn.stages.export import write_webdataset
    from udfs.balance import max_over_median

    spark = get_spark(
        SparkConfig(
            master="local[2]",
            conf={
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.shuffle.partitions": "8",
                "spark.driver.memory": "6g",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
            },
        )
    )
    spark.sparkContext.setLogLevel("ERROR")

    warm = assignments(spark, 50_000, 250, 1)
    sample_once(warm, 0, 50_000)
    warm.unpersist()  # type: ignore[attr-defined]
    times = {}
    last: tuple[dict[str, np.ndarray], np.ndarray] | None = None
    for n in sizes:
        df = assignments(spark, n, max(1, n // 200), 7)
        seconds, kernel, after, before = sample_once(df, 0, n)
        df.unpersist()  # type: ignore[attr-defined]
        times[n] = seconds
        last = (after, before)
        print(
            f"N={n:>11,} assignments, {before.size:,} leaves: sampling {seconds:7.2f} s "
            f"({n / seconds:,.0f} rows/s; quota kernels {kernel * 1e3:.1f} ms)"
        )
    if len(sizes) > 1:
        exponent = math.log(times[sizes[-1]] / times[sizes[0]]) / math.log(sizes[-1] / sizes[0])
        print(f"time grows as N^{exponent:.2f} from N={sizes[0]:,} to N={sizes[-1]:,} (1.0 = linear)")
    assert last is not None
    after, before = last
    print(f"Zipf(1) leaf sizes at N={sizes[-1]:,}: max/median before {max_over_median(before):.2f}")
    for name, counts in after.items():
        print(f"  {name}: {int(counts.sum()):,} rows, max/median after {max_over_median(counts):.2f}")

    pairs, vocab_rows = concept_pairs(spark, 20_000, 200, 1)
    concept_sampling_once(pairs, vocab_rows, 2_000, 0)  # warm-up
    pairs.unpersist()  # type: ignore[attr-defined]
    pairs, vocab_rows = concept_pairs(spark, concept_rows, max(1, concept_rows // 100), 3, args.mentions)
    concepts = concept_sampling_once(pairs, vocab_rows, concept_rows // 10, 0)
    pairs.unpersist()  # type: ignore[attr-defined]
    for path, (seconds, kept, before_share, after_share) in concepts.items():
        what = "match + t* + cut" if path == "entries" else "weights + keys + cut (matches reused)"
        print(
            f"{path} scale over {concept_rows:,} pairs ({args.mentions} entry mention(s) each), "
            f"{concept_rows // 100:,} Zipf(1) entries, target "
            f"{concept_rows // 10:,}: {int(kept):,} kept in {seconds:.1f} s ({concept_rows / seconds:,.0f} pairs/s, "
            f"{what}); top 1% of entries hold {before_share:.1%} of matches before, {after_share:.1%} after"
        )

    with tempfile.TemporaryDirectory() as tmp:
        lakehouse, rows, cfg = export_rows(spark, f"{tmp}/lake", m)
        n = rows.count()
        write_webdataset(lakehouse, rows, n, f"{tmp}/warm", cfg)  # type: ignore[arg-type]
        t = time.perf_counter()
        shards, _ = write_webdataset(lakehouse, rows, n, f"{tmp}/wds", cfg)  # type: ignore[arg-type]
        spark_s = time.perf_counter() - t
        plain_s = plain_tar_writer(lakehouse, rows, Path(tmp) / "plain", 1000)
        print(
            f"WebDataset export of {n:,} samples ({shards} shards): Spark tasks {n / spark_s:,.0f} samples/s "
            f"({spark_s:.2f} s), single-process tarfile {m / plain_s:,.0f} samples/s ({plain_s:.2f} s), "
            f"ratio {plain_s / spark_s:.2f}x"
        )
    print(f"entries_head_share_after: {concepts['entries'][3]:.3f}")
    print(f"balance_max_over_median_after: {max_over_median(after['n10pct']):.2f}")


if __name__ == "__main__":
    main()
