"""Extraction benchmark: sentences per second through split + filters + exact dedup, Spark vs one process.

Both sides run the same functions of ``udfs.sentences`` on the same texts (``--corpus mmc4``: the real MMC4 sample,
repeated ``--copies`` times under new document ids; ``--corpus generated``: every text of a corpus of ``--documents``
documents of ``realsyn.corpus_generator``, in both layouts, written under ``--corpus-dir`` unless it is there already)
with the paper's thresholds: Punkt split and normalisation, emoji /
URL / word-count filters, the CAT parse (spaCy), word entropy over the whole corpus, exact dedup. Perplexity is
left out on both sides (GPT-2-large cannot be loaded here, and a tiny random model would not show its cost).
Each side runs once on a small warm-up first (JVM, Python workers, parser loading), then is timed.

Prints both rates and, last, ``sentences_per_s_ratio: <spark / single process>``.

The image side of the extraction benchmark (perceptual-hash search scaling) is ``bench/phash.py``; sections
of this script are independent functions, so more can be added beside ``bench_sentences``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MMC4 = Path(os.environ.get("REALSYN_SHARED_DATA", REPO.parent / "shared" / "data")) / "mmc4"


def load_texts(folder: Path, copies: int) -> list[tuple[str, int, str]]:
    """(doc_id, position, text) rows of every MMC4 jsonl file in ``folder``, ``copies`` times."""
    rows: list[tuple[str, int, str]] = []
    for copy in range(copies):
        for path in sorted(folder.glob("*.jsonl")):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    doc = json.loads(line)
                    rows.extend((f"{copy}:{doc['url']}", i, t) for i, t in enumerate(doc["text_list"]))
    return rows


def load_generated(folder: Path, documents: int, seed: int, spark: object) -> list[tuple[str, int, str]]:
    """(doc_id, position, text) rows of every document of the generated corpus under ``folder`` (written first,
    by Spark tasks, unless a corpus of the same settings is there)."""
    import pyarrow.parquet as pq

    from realsyn.config_sections import GeneratedCorpusConfig
    from realsyn.corpus_generator import generate_corpus

    generate_corpus(GeneratedCorpusConfig(documents=documents, seed=seed), folder, spark)  # type: ignore[arg-type]
    rows: list[tuple[str, int, str]] = []
    for path in sorted((folder / "mmc4").glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                rows.extend((doc["url"], i, t) for i, t in enumerate(doc["text_list"]))
    for path in sorted((folder / "obelics").glob("*.parquet")):
        for doc in pq.read_table(path, columns=["texts", "general_metadata"]).to_pylist():
            url = json.loads(doc["general_metadata"])["url"]
            rows.extend((url, i, t) for i, t in enumerate(doc["texts"]) if t is not None)
    return rows


def single_process(rows: list[tuple[str, int, str]], parser: str) -> tuple[int, int]:
    """Split + filters + exact dedup in this process: (sentence occurrences, distinct sentences kept)."""
    from realsyn.config_sections import ExtractSentencesConfig
    from udfs import sentences as S

    cfg = ExtractSentencesConfig()
    occurrences: Counter[str] = Counter()
    for _, _, text in rows:
        occurrences.update(S.split_sentences(text, cfg.language))
    distinct = pd.Series(list(occurrences))
    feats = S.basic_features(distinct)
    counts: dict[str, int] = {}
    for text, n in occurrences.items():
        for w in S.words(text):
            counts[w] = counts.get(w, 0) + n
    total = sum(counts.values())
    ok = (
        (distinct != "")
        & ~feats["has_emoji"]
        & ~feats["has_url"]
        & (feats["n_words"] >= cfg.min_words)
        & (feats["n_words"] <= cfg.max_words)
    )
    survivors = distinct[ok]
    cat = S.cat_features(survivors, parser, cfg.cat.batch_size)
    survivors = survivors[(cat["complexity"] >= cfg.cat.min_complexity) & cat["has_action"]]
    entropy = survivors.map(lambda t: S.word_entropy(S.words(t), counts, total))
    kept = survivors[entropy >= cfg.min_word_entropy]
    return sum(occurrences.values()), len(kept)


def spark_run(spark: object, rows: list[tuple[str, int, str]], partitions: int) -> tuple[int, int]:
    """The same steps as the Spark stage runs them: (sentence occurrences, distinct sentences kept)."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from realsyn.config_sections import ExtractSentencesConfig, SentencePerplexityConfig
    from realsyn.stages.extract_sentences import filter_sentences, group_occurrences, split_occurrences

    assert isinstance(spark, SparkSession)
    cfg = ExtractSentencesConfig(perplexity=SentencePerplexityConfig(enabled=False))
    texts = spark.createDataFrame(rows, "doc_id string, position int, text string").repartition(partitions)
    distinct = group_occurrences(split_occurrences(texts, cfg)).persist()
    occurrences = int(distinct.agg(F.sum("n_occurrences")).first()[0])  # type: ignore[index]
    kept, _ = filter_sentences(distinct, cfg)
    n_kept = kept.count()
    spark.catalog.clearCache()
    return occurrences, n_kept


def bench_sentences(args: argparse.Namespace) -> float:
    """Time both sides on the same texts; print rates and return the Spark / single-process ratio."""
    from realsyn.config_sections import ExtractSentencesConfig, SparkConfig
    from realsyn.spark import get_spark

    parser = ExtractSentencesConfig().cat.parser
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="bench-extract",
            conf={
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.shuffle.partitions": str(args.partitions),
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.driver.memory": "4g",
                "spark.local.dir": tempfile.mkdtemp(prefix="bench-extract-"),
            },
        )
    )
    spark.sparkContext.setLogLevel("ERROR")
    if args.corpus == "generated":
        start = time.perf_counter()
        rows = load_generated(args.corpus_dir, args.documents, args.seed, spark)
        took = time.perf_counter() - start
        print(f"generated corpus: {args.documents} documents in {args.corpus_dir} ({took:.1f} s)")
    else:
        rows = load_texts(args.mmc4, args.copies)
    warmup = load_texts(args.mmc4, 1)[:200] if args.corpus == "mmc4" else rows[:200]

    single_process(warmup, parser)
    t0 = time.perf_counter()
    occ_single, kept_single = single_process(rows, parser)
    single_s = time.perf_counter() - t0

    spark_run(spark, warmup, args.partitions)
    t0 = time.perf_counter()
    occ_spark, kept_spark = spark_run(spark, rows, args.partitions)
    spark_s = time.perf_counter() - t0
    spark.stop()

    if (occ_single, kept_single) != (occ_spark, kept_spark):
        raise SystemExit(f"results differ: single {occ_single}/{kept_single} vs spark {occ_spark}/{kept_spark}")
    print(f"texts: {len(rows)}  sentence occurrences: {occ_single}  kept distinct: {kept_single}")
    print(f"single process: {single_s:.1f} s  {occ_single / single_s:.0f} sentences/s")
    print(f"spark local[2]: {spark_s:.1f} s  {occ_spark / spark_s:.0f} sentences/s")
    return (occ_spark / spark_s) / (occ_single / single_s)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the sentence benchmark, print the key figure last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one copy of the sample (about a minute)")
    parser.add_argument("--copies", type=int, default=8, help="times the sample is repeated (ignored with --quick)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--mmc4", type=Path, default=DEFAULT_MMC4, help="folder of MMC4 jsonl files")
    parser.add_argument("--corpus", choices=("mmc4", "generated"), default="mmc4", help="whose texts are extracted")
    parser.add_argument("--documents", type=int, default=10_000, help="documents of the generated corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated corpus")
    parser.add_argument(
        "--corpus-dir", type=Path, default=None, help="folder of the generated corpus (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.copies = 1
        args.documents = min(args.documents, 300)
    if args.corpus_dir is None:
        args.corpus_dir = Path(tempfile.mkdtemp(prefix="bench-extract-corpus-"))
    ratio = bench_sentences(args)
    print(f"sentences_per_s_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
