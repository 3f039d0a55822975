"""Sentence near dedup (MinHash LSH, ``realsyn.stages.extract_sentences.near_duplicate_pairs``) with each sentence's
band buckets cut from its own row (``band_buckets``) against the way they were computed before: every MinHash value
exploded to a row of its own and the bands put back together by a grouping, a shuffle of ``bands * rows_per_band``
rows per sentence. Side by side on one Spark session, on the distinct sentences of a generated corpus.

The sentences: every text of ``bronze.texts`` of an ingested generated corpus of ``--documents`` documents, split
and grouped as the stage does (``split_occurrences``, ``group_occurrences``), before any filter. Both ways must find
the same pairs, or the script fails. Per way: seconds (the pairs computed and counted) and Spark's shuffle bytes
written (its event log); ``--rounds`` alternates the order. Last line:
``near_dedup_after_over_before: <seconds after / seconds before>``. ``--quick``: 1,000 documents.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import realsyn.stages.extract_sentences as stage  # noqa: E402
from bench.scaling import event_log_metrics, generated_lake, side_by_side_args  # noqa: E402
from realsyn.contracts import BRONZE_TEXTS  # noqa: E402

WAYS = ("before", "after")


def grouped_band_buckets(values: DataFrame, bands: int, rows_per_band: int) -> DataFrame:
    """The way before: each MinHash value a row, the bands put back together by grouping on (sentence, band)."""
    exploded = values.select("sentence_id", F.posexplode("h").alias("i", "h")).select(
        "sentence_id", (F.col("i") / rows_per_band).cast("int").alias("band"), "i", "h"
    )
    return exploded.groupBy("sentence_id", "band").agg(
        F.xxhash64(F.array_sort(F.collect_list(F.struct("i", "h")))).alias("bucket")
    )


def pairs_of(way: str, sentences: DataFrame, cfg: object) -> set[tuple[str, str]]:
    """The near-duplicate pairs of ``sentences``, with the band buckets of ``way``."""
    cut = stage.band_buckets
    stage.band_buckets = grouped_band_buckets if way == "before" else cut
    try:
        return {(r["src"], r["dst"]) for r in stage.near_duplicate_pairs(sentences, cfg).collect()}  # type: ignore[arg-type]
    finally:
        stage.band_buckets = cut


def main(argv: list[str] | None = None) -> None:
    args = side_by_side_args(__doc__.splitlines()[0], "before/after", argv)
    cfg, lakehouse, events = generated_lake(args, "realsyn-near-dedup-")
    spark, n = lakehouse.spark, args.documents
    section = cfg.extract_sentences
    occurrences = stage.split_occurrences(lakehouse.read(BRONZE_TEXTS), section).where(F.col("text") != "")
    sentences = stage.group_occurrences(occurrences).select("sentence_id", "text").localCheckpoint(eager=True)
    near = section.near_dedup
    print(
        f"{n:,} generated documents: {sentences.count():,} distinct sentences, {near.bands} bands of "
        f"{near.rows_per_band} MinHash values, Spark {spark.sparkContext.master}"
    )

    seconds = dict.fromkeys(WAYS, 0.0)
    windows: dict[str, tuple[float, float]] = {}
    found: dict[str, set[tuple[str, str]]] = {}
    for r in range(args.rounds):
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            t0, w0 = time.perf_counter(), time.time()
            pairs = pairs_of(way, sentences, near)
            s = time.perf_counter() - t0
            seconds[way] += s
            windows[f"{way}/{r}"] = (w0, time.time())
            if found.setdefault(way, pairs) != pairs:
                raise SystemExit(f"{way}: two rounds found different pairs")
            print(f"  round {r + 1} {way:6} {s:7.1f} s, {len(pairs):,} pairs", flush=True)
    spark.stop()
    if found["before"] != found["after"]:
        raise SystemExit("the two ways found different pairs")
    metrics = event_log_metrics(events, windows)
    for way in WAYS:
        shuffle = sum(m["shuffle_write_bytes"] for k, m in metrics.items() if k.startswith(f"{way}/"))
        print(f"{way:6} {seconds[way]:7.1f} s  shuffle written {shuffle / 1e6:,.1f} MB")
    print(f"near_dedup_after_over_before: {seconds['after'] / seconds['before']:.3f}")


if __name__ == "__main__":
    main()
