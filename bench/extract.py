"""Extraction benchmark: the Spark stages' CPU work against one process running the same ``udfs`` functions over the
same rows, on two cores.

``--parts sentences`` (the default): sentences per second through split + filters + exact dedup. Both sides run the
same functions of ``udfs.sentences`` on the same texts (``--corpus mmc4``: the real MMC4 sample, repeated
``--copies`` times under new document ids; ``--corpus generated``: every text of a corpus of ``--documents``
documents of ``realsyn.corpus_generator``, in both layouts, written under ``--corpus-dir`` unless it is there
already) with the paper's thresholds: Punkt split and normalisation, emoji / URL / word-count filters, the CAT parse
(spaCy), word entropy over the whole corpus, exact dedup. Perplexity is left out on both sides (GPT-2-large cannot
be loaded here, and a tiny random model would not show its cost).

``--parts images`` (generated corpus only): images per second through the image extraction stage, every image file
of the corpus as one fetched URL (read from one parquet file by both sides, with the hash of the bytes and the header
the fetch stage stores, but not its perceptual hash, so that the stage hashes the bytes itself, as it does for rows
of another tool or an earlier version: its heaviest form; ``bench/hash_at_fetch.py`` measures the pipeline's own
path, the hash stored by the fetch stage): quality filter, exact dedup, perceptual hash, banded near-duplicate search
and connected components. The
Spark side is the stage's own function (``realsyn.stages.extract_images.extract_images``, its images and rejects
computed in full); the one process runs ``udfs.images`` and scipy's connected components. Under each side's rate:
its CPU seconds (the one process's; the Spark side's split into this process, Spark's JVM and Spark's Python
workers) against the seconds its cores had.

``--parts ingest`` (generated corpus only): documents per second through the ingest stage
(``realsyn.stages.ingest.run_ingest``, both layouts of the corpus into a new lake) on ``local[1]`` against
``local[2]``: ingest is Spark SQL only, no ``udfs`` function runs in it, so its one-process reference is the stage
on one core. ``local[1]`` alone is not one core: its one task thread leaves the second core to the JVM's compiler and
garbage collector threads (docs/benchmarks.md measures how much). So the reference runs with every thread of this
process and of Spark's JVM and Python workers pinned to one CPU (``sched_setaffinity``), and each side's CPU
seconds are printed under its rate.

Each side runs once on a small warm-up first (JVM, Python workers, parser loading; ingest: a whole run into another
lake), then is timed; the four counts
(or the sentence counts) of both sides must agree, or the script fails. Prints both rates per part and, last,
``ingest_per_s_ratio``, ``images_per_s_ratio`` and ``sentences_per_s_ratio: <spark / single process>`` for the
parts run, in that order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
FETCHED_FIELDS = (
    ("url_id", "string"),
    ("status", "string"),
    ("image_id", "string"),
    ("width", "int32"),
    ("height", "int32"),
    ("format", "string"),
    ("content", "binary"),
)
PARTS = ("ingest", "images", "sentences")  # in the order their figures are printed
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


def generated_corpus(folder: Path, documents: int, seed: int, spark: object) -> None:
    """Write a generated corpus of ``documents`` under ``folder`` by Spark tasks, unless one of the same settings is
    there."""
    from realsyn.config_sections import GeneratedCorpusConfig
    from realsyn.corpus_generator import generate_corpus

    start = time.perf_counter()
    generate_corpus(GeneratedCorpusConfig(documents=documents, seed=seed), folder, spark)  # type: ignore[arg-type]
    print(f"generated corpus: {documents} documents in {folder} ({time.perf_counter() - start:.1f} s)")


def load_generated(folder: Path) -> list[tuple[str, int, str]]:
    """(doc_id, position, text) rows of every document of the generated corpus under ``folder``."""
    import pyarrow.parquet as pq

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
    cat = S.cat_features(survivors, parser, cfg.cat.batch_size, phrases=True)  # as the stage parses
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
    kept, _, _ = filter_sentences(distinct, cfg)
    n_kept = kept.count()
    spark.catalog.clearCache()
    return occurrences, n_kept


def bench_spark(partitions: int, master: str = "local[2]") -> object:
    """The benchmark's Spark session: ``master`` (two cores by default), Arrow on, no UI."""
    from realsyn.config_sections import SparkConfig
    from realsyn.spark import get_spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = get_spark(
        SparkConfig(
            master=master,
            app_name="bench-extract",
            conf={
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.shuffle.partitions": str(partitions),
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.driver.memory": "4g",
                "spark.local.dir": tempfile.mkdtemp(prefix="bench-extract-"),
            },
        )
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def bench_sentences(args: argparse.Namespace, spark: object) -> float:
    """Time both sides on the same texts; print rates and return the Spark / single-process ratio."""
    from realsyn.config_sections import ExtractSentencesConfig

    parser = ExtractSentencesConfig().cat.parser
    rows = load_generated(args.corpus_dir) if args.corpus == "generated" else load_texts(args.mmc4, args.copies)
    warmup = load_texts(args.mmc4, 1)[:200] if args.corpus == "mmc4" else rows[:200]

    single_process(warmup, parser)
    t0 = time.perf_counter()
    occ_single, kept_single = single_process(rows, parser)
    single_s = time.perf_counter() - t0

    spark_run(spark, warmup, args.partitions)
    t0 = time.perf_counter()
    occ_spark, kept_spark = spark_run(spark, rows, args.partitions)
    spark_s = time.perf_counter() - t0

    if (occ_single, kept_single) != (occ_spark, kept_spark):
        raise SystemExit(f"results differ: single {occ_single}/{kept_single} vs spark {occ_spark}/{kept_spark}")
    print(f"texts: {len(rows)}  sentence occurrences: {occ_single}  kept distinct: {kept_single}")
    print(f"single process: {single_s:.1f} s  {occ_single / single_s:.0f} sentences/s")
    print(f"spark local[2]: {spark_s:.1f} s  {occ_spark / spark_s:.0f} sentences/s")
    return (occ_spark / spark_s) / (occ_single / single_s)


def image_rows(folder: Path, out: Path, limit: int | None = None) -> Path:
    """Every image file (the first ``limit``) of the generated corpus under ``folder`` as one fetched URL each
    (``url_id``, ``status`` ok, ``image_id``, ``width``, ``height``, ``format``, ``content``), written to
    ``out/fetched.parquet``, and a reference of each URL from one document (``out/refs.parquet``): what
    ``bronze.fetched_images`` and ``bronze.image_refs`` hold for them. Untimed: the fetch stage's work, which
    stores the hash of the bytes and the header as the ``udfs`` functions read them (no size where the bytes
    are no image: the fetch stage would not mark those ok, so both sides read them again). The perceptual hash,
    which the fetch stage stores too, is left out: both sides compute it (see the module's docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from udfs.ids import bytes_id
    from udfs.images import image_info

    files = sorted(p for p in (folder / "images").rglob("*") if p.is_file())[:limit]
    names = [p.relative_to(folder).as_posix() for p in files]
    out.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(name, pa.type_for_alias(kind)) for name, kind in FETCHED_FIELDS])
    with pq.ParquetWriter(out / "fetched.parquet", schema) as writer:
        for start in range(0, len(files), 2_000):
            chunk = slice(start, start + 2_000)
            contents = [p.read_bytes() for p in files[chunk]]
            headers = [image_info(c) for c in contents]
            writer.write_table(
                pa.table(
                    {
                        "url_id": names[chunk],
                        "status": ["ok"] * len(contents),
                        "image_id": [bytes_id(c) for c in contents],
                        "width": [h[0] for h in headers],
                        "height": [h[1] for h in headers],
                        "format": [h[2] for h in headers],
                        "content": contents,
                    },
                    schema=schema,
                ),
                row_group_size=500,
            )
    pq.write_table(pa.table({"url_id": names, "doc_id": [n.split("/")[1] for n in names]}), out / "refs.parquet")
    return out


def images_single(folder: Path) -> tuple[int, int, int, int]:
    """Quality filter, exact dedup and perceptual dedup of ``folder``'s fetched images in this process with the
    ``udfs.images`` functions the stage runs: (URLs, passed quality, distinct images, kept after perceptual)."""
    import numpy as np
    import pyarrow.parquet as pq
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from realsyn.config_sections import ExtractImagesConfig
    from udfs.ids import bytes_id
    from udfs.images import band_keys, hamming, image_info_batch, phash_batch

    cfg = ExtractImagesConfig()
    urls = passed = 0
    distinct: set[str] = set()
    found = []
    # A row group at a time (image_rows writes 500 rows each): only the ids and the hashes stay in memory.
    # (ParquetFile.iter_batches keeps what it has read allocated, pyarrow 26: 2.8 GB after 60,000 of these rows.)
    parquet = pq.ParquetFile(folder / "fetched.parquet")
    header = ["image_id", "width", "height", "format"]
    for group in range(parquet.num_row_groups):
        rows = parquet.read_row_group(group).to_pandas()
        # As the stage: the fetch stage's header where it stored one, else the header read from the bytes.
        missing = rows[header].isna().any(axis=1)
        if missing.any():
            read = image_info_batch(rows.loc[missing, "content"])
            for name in ("width", "height"):  # pandas' nullable Int32 as the float column of a parquet int with nulls
                rows.loc[missing, name] = read[name].astype("float").to_numpy()
            rows.loc[missing, "format"] = read["format"].astype(object).to_numpy()
            rows.loc[missing, "image_id"] = rows.loc[missing, "image_id"].fillna(
                rows.loc[missing, "content"].map(bytes_id)
            )
        w, h = rows["width"].astype("float"), rows["height"].astype("float")
        short, long = np.minimum(w, h), np.maximum(w, h)
        good = rows[(short >= cfg.min_short_side) & (long <= short * cfg.max_aspect_ratio)]
        new = {}
        for image_id, content in zip(good["image_id"], good["content"], strict=True):
            if image_id not in distinct:
                distinct.add(image_id)
                new[image_id] = content
        found.append(phash_batch(pd.Series(new, dtype=object)).dropna().to_numpy(np.int64))
        urls, passed = urls + len(rows), passed + len(good)
    hashes = np.unique(np.concatenate(found))
    pd_cfg = cfg.perceptual_dedup
    keys = band_keys(hashes, pd_cfg.bands, pd_cfg.max_distance)
    owner = np.repeat(np.arange(hashes.size), keys.shape[1])
    buckets = pd.Series(owner).groupby(keys.reshape(-1)).agg(list)
    src: list[int] = []
    dst: list[int] = []
    for members in buckets[buckets.map(len) > 1]:
        m = np.array(sorted(set(members)))
        i, j = np.triu_indices(m.size, k=1)
        close = hamming(hashes[m[i]], hashes[m[j]]) <= pd_cfg.max_distance
        src.extend(m[i][close])
        dst.extend(m[j][close])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(hashes.size, hashes.size))
    kept, _ = connected_components(graph, directed=False)
    return urls, passed, len(distinct), int(kept)


def images_spark(spark: object, folder: Path) -> tuple[int, int, int, int]:
    """The stage's own computation (``realsyn.stages.extract_images.extract_images``) on the same rows, both of its
    outputs computed in full (written to Spark's no-op sink instead of Delta): the same four counts."""
    from pyspark.sql import SparkSession

    from realsyn.config_sections import ExtractImagesConfig
    from realsyn.stages.extract_images import extract_images

    assert isinstance(spark, SparkSession)
    fetched = spark.read.parquet(str(folder / "fetched.parquet"))
    refs = spark.read.parquet(str(folder / "refs.parquet"))
    with extract_images(fetched, refs, ExtractImagesConfig()) as (images, rejects, steps):
        for frame in (images, rejects):
            frame.write.format("noop").mode("overwrite").save()
    quality, exact, perceptual = steps
    return quality.rows_in, quality.rows_out, exact.rows_out, perceptual.rows_out


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process, by its Spark JVM and by Spark's Python workers.
    Workers that ended are counted through the process that waited for them: the daemon that forked them, or the
    JVM, which started the daemon (the JVM's children are only Python workers here)."""
    import psutil

    me = psutil.Process()
    used = dict.fromkeys(("this process", "JVM", "Python workers"), 0.0)
    times = me.cpu_times()
    used["this process"] = times.user + times.system
    for proc in me.children(recursive=True):
        try:
            with proc.oneshot():
                times, cmd = proc.cpu_times(), proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if cmd and Path(cmd[0]).name == "java":
            used["JVM"] += times.user + times.system
            used["Python workers"] += times.children_user + times.children_system
        elif "pyspark.daemon" in cmd or "pyspark.worker" in cmd:  # forked workers keep the daemon's command line
            used["Python workers"] += times.user + times.system + times.children_user + times.children_system
    return used


def print_cpu(seconds: float, before: dict[str, float], after: dict[str, float], cores: int = 2) -> None:
    """Where a ``local[cores]`` side's CPU seconds went, against its cores' seconds of its wall time (a side may use
    more: the JVM's compiler and garbage collector threads are not Spark tasks)."""
    spent = {kind: after[kind] - before[kind] for kind in before}
    parts = ", ".join(f"{kind} {value:.1f}" for kind, value in spent.items())
    print(f"  spark local[{cores}] CPU s: {parts}; {sum(spent.values()):.1f} of {cores} core(s)' {cores * seconds:.1f}")


def bench_images(args: argparse.Namespace, spark: object) -> float:
    """Time both sides on the generated corpus's images; print rates, where each side's CPU went, and return the
    Spark / one-process ratio."""
    work = Path(tempfile.mkdtemp(prefix="bench-extract-images-"))
    rows, warmup = image_rows(args.corpus_dir, work / "all"), image_rows(args.corpus_dir, work / "warmup", 200)
    images_single(warmup)
    images_spark(spark, warmup)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    single = images_single(rows)
    single_s, cpu1 = time.perf_counter() - t0, cpu_seconds()
    t0 = time.perf_counter()
    in_spark = images_spark(spark, rows)
    spark_s, cpu2 = time.perf_counter() - t0, cpu_seconds()
    if single != in_spark:
        raise SystemExit(f"results differ (URLs, quality, exact, perceptual): single {single} vs spark {in_spark}")
    urls, passed, distinct, kept = single
    print(f"images: {urls} URLs, {passed} pass quality, {distinct} distinct, {kept} kept after perceptual dedup")
    print(f"single process: {single_s:.1f} s  {urls / single_s:.0f} images/s")
    print(f"  single process CPU s: {cpu1['this process'] - cpu0['this process']:.1f} of one core's {single_s:.1f}")
    print(f"spark local[2]: {spark_s:.1f} s  {urls / spark_s:.0f} images/s")
    print_cpu(spark_s, cpu1, cpu2)
    return single_s / spark_s


def timed_ingest(spark: object, corpus: Path, lake: Path) -> tuple[float, int]:
    """Seconds of the ingest stage (``realsyn.stages.ingest.run_ingest``) of the generated corpus under ``corpus``
    (both layouts, as the pipeline configures them) into a new lake at ``lake``, and the documents it added."""
    from realsyn.config_sections import Config, GeneratedCorpusConfig, IngestConfig, StorageConfig
    from realsyn.corpus_generator import ingest_inputs
    from realsyn.stages.ingest import run_ingest
    from realsyn.tables import Lakehouse

    storage = StorageConfig(root=str(lake))
    inputs = ingest_inputs(corpus, GeneratedCorpusConfig().layout)
    cfg = Config(storage=storage, ingest=IngestConfig(inputs=inputs))
    start = time.perf_counter()
    summary = run_ingest(Lakehouse(spark, storage), cfg)  # type: ignore[arg-type]
    return time.perf_counter() - start, summary.documents_new


@contextmanager
def pinned(cores: int) -> Iterator[None]:
    """Every thread of this process and of its children (Spark's JVM, its Python daemon and workers) on the first
    ``cores`` CPUs this process may use while the block runs; threads and processes they start inherit it. Every
    thread is given back all of them afterwards."""
    import psutil

    allowed = os.sched_getaffinity(0)

    def pin(cpus: set[int]) -> None:
        me = psutil.Process()
        for proc in (me, *me.children(recursive=True)):
            try:
                threads = proc.threads()
            except psutil.NoSuchProcess:
                continue
            for thread in threads:
                with suppress(ProcessLookupError):  # a thread that ended in between
                    os.sched_setaffinity(thread.id, cpus)

    pin(set(sorted(allowed)[:cores]))
    try:
        yield
    finally:
        pin(allowed)


def bench_ingest(args: argparse.Namespace) -> float:
    """Time the ingest stage on one core (``local[1]``) and on two (``local[2]``), each in a session of its own after
    a warm-up run; return the two-core / one-core rate ratio. Ingest is Spark SQL only (JSON and parquet reads,
    validation, Delta merges): no ``udfs`` function runs in it, so its one-process reference is the stage itself on
    one core, every thread of the run pinned to one CPU."""
    work = Path(tempfile.mkdtemp(prefix="bench-extract-ingest-"))
    seconds = {}
    for cores in (1, 2):
        master = f"local[{cores}]"
        with pinned(cores):
            spark = bench_spark(args.partitions, master)
            timed_ingest(spark, args.corpus_dir, work / f"warm-{cores}-cores")
            before = cpu_seconds()
            seconds[master], added = timed_ingest(spark, args.corpus_dir, work / f"lake-{cores}-cores")
            after = cpu_seconds()
            spark.stop()  # type: ignore[attr-defined]
        if added != args.documents:
            raise SystemExit(f"ingest on {master} added {added} documents, the corpus has {args.documents}")
        print(f"ingest {master}: {seconds[master]:.1f} s  {added / seconds[master]:.0f} documents/s")
        print_cpu(seconds[master], before, after, cores)
    return seconds["local[1]"] / seconds["local[2]"]


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
    parser.add_argument(
        "--parts",
        default="sentences",
        help="comma-separated: ingest, images (both on the generated corpus only), sentences; figures are printed in "
        "that order",
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - set(PARTS) or (set(parts) - {"sentences"} and args.corpus != "generated"):
        parser.error(f"--parts {args.parts}: ingest, images and sentences; ingest and images with --corpus generated")
    if args.quick:
        args.copies = 1
        args.documents = min(args.documents, 300)
    if args.corpus_dir is None:
        args.corpus_dir = Path(tempfile.mkdtemp(prefix="bench-extract-corpus-"))
    spark = bench_spark(args.partitions)
    if args.corpus == "generated":
        generated_corpus(args.corpus_dir, args.documents, args.seed, spark)
    figures = {}
    if "images" in parts:
        figures["images"] = bench_images(args, spark)
    if "sentences" in parts:
        figures["sentences"] = bench_sentences(args, spark)
    spark.stop()  # type: ignore[attr-defined]
    if "ingest" in parts:  # in sessions of its own, one core and two
        figures["ingest"] = bench_ingest(args)
    for part in PARTS:
        if part in figures:
            print(f"{part}_per_s_ratio: {figures[part]:.3f}")


if __name__ == "__main__":
    main()
