"""Stage extract_sentences (paper section 3.1): bronze.texts -> silver.sentences and silver.sentence_rejects.

Steps, in the paper's order:

1. split every text into sentences with NLTK Punkt and normalise them (``udfs.sentences``); one row per
   sentence occurrence ``(doc_id, position, sentence_index, text)``;
2. filters, each dropping with exactly one reason: empty, emoji, URL, word count, CAT, word entropy,
   perplexity (CAT and perplexity can be switched off in the config);
3. exact dedup: ``sentence_id = stable_id(normalised text)``; a sentence keeps every document it occurs in;
4. near dedup: MinHash LSH (Spark MLlib) over character shingles, banded, candidates checked by exact Jaccard,
   grouped by connected components (``realsyn.components``).

Semantic dedup, which needs the embeddings, is a stage of its own after embed (:mod:`realsyn.stages.semantic_dedup`).

Filters only look at the normalised text (and at corpus statistics), so every occurrence of a sentence gets the
same verdict; they therefore run once per distinct sentence, which carries its occurrence count, and the funnel
counts occurrences for the filter steps exactly as if each occurrence had been filtered. Units of the funnel:
sentence occurrences up to exact dedup (its output is distinct sentences), distinct sentences after it.

Rejects: one row per distinct dropped sentence with ``step``, ``reason``, ``detail`` (the value the filter
measured) and, for duplicates, the ``duplicate_of`` sentence that absorbed it (its documents and occurrences are
merged into that sentence).
Exact duplicates are not rows of their own: they are the ``n_occurrences`` of the kept sentence.

The CAT filter's parse also reads each sentence's nouns and noun phrases (``udfs.tagger.doc_phrases``); those of the
kept sentences go to ``silver.sentence_phrases`` with the parser's name, and the generate stage's tag vocabulary
counts them instead of parsing every sentence a second time (with CAT off the table is empty and it parses them).

Retry safety: the three silver tables are replaced in one commit each, and the funnel rows of the stage are replaced
after them; word probabilities depend on the whole corpus, so the stage recomputes from bronze.texts.
Intermediate results are local checkpoints: the parser and the language model run once per sentence, and query
plans stay small however many steps are chained.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.components import group_duplicates, merge_into_representatives
from realsyn.config import ConfigError, check_references
from realsyn.config_sections import (
    Config,
    ExtractSentencesConfig,
    SentenceCatConfig,
    SentenceNearDedupConfig,
    SentencePerplexityConfig,
)
from realsyn.contracts import (
    BRONZE_TEXTS,
    DETAIL,
    REASON,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_PHRASES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
)
from realsyn.funnel import FunnelStep, first_reason, format_funnel, split, write_funnel
from realsyn.ids import stable_id_col
from realsyn.semdedup import prune_embeddings
from realsyn.tables import Lakehouse
from realsyn.workers import task_device

STAGE = "extract_sentences"

# Funnel steps in order, and the reasons each one gives.
FILTER_STEPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("empty", ("empty",)),
    ("emoji", ("emoji",)),
    ("url", ("url",)),
    ("word_count", ("too_few_words", "too_many_words")),
    ("cat", ("low_complexity", "no_action")),
    ("word_entropy", ("low_word_entropy",)),
    ("perplexity", ("perplexity_too_low", "perplexity_too_high")),
)
STEP_OF_REASON = {reason: step for step, reasons in FILTER_STEPS for reason in reasons}

_FEATURES = T.StructType(
    [
        T.StructField("n_words", T.IntegerType()),
        T.StructField("has_emoji", T.BooleanType()),
        T.StructField("has_url", T.BooleanType()),
        T.StructField("words", T.ArrayType(T.StringType())),
    ]
)
_CAT = T.StructType(
    [
        T.StructField("complexity", T.IntegerType()),
        T.StructField("has_action", T.BooleanType()),
        T.StructField("phrases", T.ArrayType(T.StringType())),
    ]
)


@dataclass(frozen=True)
class SentencesSummary:
    """What the stage wrote: the funnel steps and the sizes of both silver tables."""

    steps: tuple[FunnelStep, ...]
    sentences: int
    rejected_sentences: int

    def __str__(self) -> str:
        return format_funnel(self.steps, "sentence extraction (occurrences, then distinct sentences)")


# ---------------------------------------------------------------------------------------------------------------
# Split and group


def split_occurrences(texts: DataFrame, cfg: ExtractSentencesConfig) -> DataFrame:
    """One row per sentence occurrence: ``doc_id, position, sentence_index, text`` (normalised, may be "")."""
    language = cfg.language

    @F.pandas_udf(T.ArrayType(T.StringType()))  # type: ignore[call-overload]
    def split_udf(batch: pd.Series) -> pd.Series:
        from udfs.sentences import split_texts

        return split_texts(batch, language)

    return texts.select("doc_id", "position", F.posexplode(split_udf("text")).alias("sentence_index", "text"))


def group_occurrences(occurrences: DataFrame) -> DataFrame:
    """Distinct sentences: ``sentence_id, text, doc_ids`` (sorted, distinct) and ``n_occurrences``."""
    return (
        occurrences.withColumn("sentence_id", stable_id_col("text"))
        .groupBy("sentence_id", "text")
        .agg(
            F.array_sort(F.collect_set("doc_id")).alias("doc_ids"),
            F.count(F.lit(1)).alias("n_occurrences"),
        )
    )


def add_basic_features(sentences: DataFrame) -> DataFrame:
    """Add ``n_words``, ``has_emoji``, ``has_url`` and ``words`` (the words entropy and shingles use)."""

    @F.pandas_udf(_FEATURES)  # type: ignore[call-overload]
    def features_udf(batch: pd.Series) -> pd.DataFrame:
        from udfs.sentences import basic_features, words

        out = basic_features(batch)
        out["words"] = [words(t) for t in batch]
        return out

    return sentences.withColumn("_f", features_udf("text")).select("*", "_f.*").drop("_f")


# ---------------------------------------------------------------------------------------------------------------
# Filters


def basic_reason(cfg: ExtractSentencesConfig) -> Column:
    """First failing cheap check: empty, emoji, URL, too few / too many words."""
    return first_reason(
        [
            (F.col("text") == "", "empty"),
            (F.lit(cfg.drop_emoji) & F.col("has_emoji"), "emoji"),
            (F.lit(cfg.drop_url) & F.col("has_url"), "url"),
            (F.col("n_words") < cfg.min_words, "too_few_words"),
            (F.col("n_words") > cfg.max_words, "too_many_words"),
        ]
    )


def add_cat(sentences: DataFrame, cfg: SentenceCatConfig) -> DataFrame:
    """Add ``complexity``, ``has_action`` and the tagger's ``phrases`` from one dependency parse (parser loaded once
    per Python worker)."""
    parser, batch_size = cfg.parser, cfg.batch_size

    @F.pandas_udf(_CAT)  # type: ignore[call-overload]
    def cat_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        from udfs.sentences import cat_features

        for batch in batches:
            yield cat_features(batch, parser, batch_size, phrases=True)

    return sentences.withColumn("_c", cat_udf("text")).select("*", "_c.*").drop("_c")


def cat_reason(cfg: SentenceCatConfig) -> Column:
    """CAT: complexity below ``min_complexity``, else no action (when required)."""
    return first_reason(
        [
            (F.col("complexity") < cfg.min_complexity, "low_complexity"),
            (F.lit(cfg.require_action) & ~F.col("has_action"), "no_action"),
        ]
    )


def word_counts(sentences: DataFrame) -> DataFrame:
    """Corpus word counts ``(word, count)`` over every occurrence of every sentence (``words``, ``n_occurrences``)."""
    return (
        sentences.select(F.explode("words").alias("word"), "n_occurrences")
        .groupBy("word")
        .agg(F.sum("n_occurrences").alias("count"))
    )


def add_word_entropy(sentences: DataFrame, counts: DataFrame, total: int) -> DataFrame:
    """Add ``word_entropy``: mean word surprisal over log(total) (see ``udfs.sentences.word_entropy``)."""
    if total < 2:
        return sentences.withColumn("word_entropy", F.lit(0.0))
    log_total = math.log(total)
    per_sentence = (
        sentences.select("sentence_id", F.explode("words").alias("word"))
        .join(counts, "word")
        .groupBy("sentence_id")
        .agg((F.avg(F.lit(log_total) - F.log(F.col("count"))) / F.lit(log_total)).alias("word_entropy"))
    )
    return sentences.join(per_sentence, "sentence_id", "left").withColumn(
        "word_entropy", F.coalesce(F.col("word_entropy"), F.lit(0.0))
    )


def score_perplexity(batches: Iterator[pd.Series], cfg: SentencePerplexityConfig) -> Iterator[pd.Series]:
    """The perplexity UDF's body: each batch of sentences scored by ``cfg.model`` on the task's device
    (``extract_sentences.perplexity.device``, resolved as every model stage does: realsyn.workers.task_device)."""
    from udfs.sentences import perplexity_batch

    device = task_device(cfg.device, "extract_sentences.perplexity.device")
    for batch in batches:
        yield perplexity_batch(batch, cfg.model, device, cfg.batch_size, cfg.max_tokens)


def add_perplexity(sentences: DataFrame, cfg: SentencePerplexityConfig) -> DataFrame:
    """Add ``perplexity`` under ``cfg.model`` (loaded once per Python worker, on the task's GPU when it has one)."""

    @F.pandas_udf(T.DoubleType())  # type: ignore[call-overload]
    def perplexity_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        yield from score_perplexity(batches, cfg)

    return sentences.withColumn("perplexity", perplexity_udf("text"))


def perplexity_reason(cfg: SentencePerplexityConfig) -> Column:
    """Perplexity outside ``[min, max]`` (a text the model cannot score counts as too high)."""
    return first_reason(
        [
            (F.col("perplexity") < cfg.min, "perplexity_too_low"),
            (F.isnan("perplexity") | (F.col("perplexity") > cfg.max), "perplexity_too_high"),
        ]
    )


def _as_rejects(
    df: DataFrame, reason: Column | str | None = None, duplicate_of: Column | None = None, detail: Column | None = None
) -> DataFrame:
    # A dedup step passes its one reason as a string: its step is known here, not compared row by row.
    reason_col = F.col(REASON) if reason is None else F.lit(reason) if isinstance(reason, str) else reason
    step = F.lit(None).cast("string")
    for name, reasons in FILTER_STEPS:
        step = F.when(reason_col.isin(*reasons), F.lit(name)).otherwise(step)
    if isinstance(reason, str):
        step = F.lit("near_dedup")
    return df.select(
        "sentence_id",
        "text",
        "doc_ids",
        "n_occurrences",
        step.alias("step"),
        reason_col.alias(REASON),
        (detail if detail is not None else F.lit(None).cast("string")).alias(DETAIL),
        (duplicate_of if duplicate_of is not None else F.lit(None).cast("string")).alias("duplicate_of"),
    )


def filter_sentences(sentences: DataFrame, cfg: ExtractSentencesConfig) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Apply every enabled filter to distinct sentences: (kept sentences, rejects with one reason each, phrases).

    Corpus word counts are taken over all occurrences before any filter ("the whole corpus"); the total is the
    one number brought to the driver. ``phrases`` holds silver.sentence_phrases rows of every sentence the CAT filter
    parsed (none when it is off).
    """
    featured = add_basic_features(sentences).localCheckpoint(eager=True)
    counts = word_counts(featured)
    total = int(counts.agg(F.coalesce(F.sum("count"), F.lit(0))).first()[0])  # type: ignore[index]

    kept, rejects = split(featured.withColumn(REASON, basic_reason(cfg)))
    n_words = F.when(F.col("n_words") == 1, F.lit("1 word")).otherwise(F.format_string("%d words", "n_words"))
    words = F.when(F.col(REASON).isin(*dict(FILTER_STEPS)["word_count"]), n_words)
    all_rejects = [_as_rejects(rejects, detail=words)]
    phrases = sentences.sparkSession.createDataFrame([], SILVER_SENTENCE_PHRASES.schema)
    if cfg.cat.enabled:
        # Checkpointed before the split so that the parser runs once for kept and rejected rows alike.
        parsed = add_cat(kept, cfg.cat).withColumn(REASON, cat_reason(cfg.cat)).localCheckpoint(eager=True)
        phrases = parsed.select("sentence_id", F.lit(cfg.cat.parser).alias("parser"), "phrases")
        kept, rejects = split(parsed.drop("phrases"))
        parse = F.format_string("complexity %d, action %s", "complexity", F.col("has_action").cast("string"))
        all_rejects.append(_as_rejects(rejects, detail=parse))
    kept, rejects = split(
        add_word_entropy(kept, counts, total).withColumn(
            REASON, first_reason([(F.col("word_entropy") < cfg.min_word_entropy, "low_word_entropy")])
        )
    )
    kept = kept.localCheckpoint(eager=True)
    all_rejects.append(_as_rejects(rejects, detail=F.format_string("word entropy %.3f", "word_entropy")))
    if cfg.perplexity.enabled:
        scored = add_perplexity(kept, cfg.perplexity).withColumn(REASON, perplexity_reason(cfg.perplexity))
        kept, rejects = split(scored.localCheckpoint(eager=True))
        all_rejects.append(_as_rejects(rejects, detail=F.format_string("perplexity %.1f", "perplexity")))
    out = all_rejects[0]
    for more in all_rejects[1:]:
        out = out.unionByName(more)
    return kept.select(*SILVER_SENTENCES.columns), out.localCheckpoint(eager=True), phrases


# ---------------------------------------------------------------------------------------------------------------
# Near dedup


def band_buckets(values: DataFrame, bands: int, rows_per_band: int) -> DataFrame:
    """One row ``(sentence_id, band, bucket)`` per band of each row of ``values`` (``sentence_id``, ``h``: its
    ``bands * rows_per_band`` MinHash values in order); ``bucket`` hashes the band's values with their positions
    (xxhash64 of ``[(i, h_i)]``), so two sentences share a bucket of a band when their values there agree.

    Each row's bands are cut from its own array, so no row leaves its partition.
    """
    r = rows_per_band

    def band(b: Column) -> Column:
        cut = F.slice("h", b * r + 1, F.lit(r))
        with_position = F.transform(cut, lambda h, k: F.struct((b * r + k).alias("i"), h.alias("h")))
        return F.struct(b.alias("band"), F.xxhash64(with_position).alias("bucket"))

    per_band = F.transform(F.sequence(F.lit(0), F.lit(bands - 1)), band)
    return values.select("sentence_id", F.explode(per_band).alias("b")).select("sentence_id", "b.band", "b.bucket")


def near_duplicate_pairs(sentences: DataFrame, cfg: SentenceNearDedupConfig) -> DataFrame:
    """Pairs ``(src, dst, jaccard)`` of sentences whose shingle sets have Jaccard >= ``cfg.min_jaccard``.

    MLlib's MinHashLSH computes ``bands * rows_per_band`` MinHash values; the values are cut into bands of
    ``rows_per_band`` and sentences whose band agrees fall in one bucket (the usual AND-OR amplification: a pair
    with Jaccard J becomes a candidate with probability 1 - (1 - J^r)^b). Inside a bucket every member is paired
    with the bucket's smallest id only (a star, linear in the bucket size), and each candidate pair is verified
    by exact Jaccard on the shingle sets, so there are no false positives.
    """
    from pyspark.ml.feature import HashingTF, MinHashLSH
    from pyspark.ml.functions import vector_to_array

    size = cfg.shingle_size

    @F.pandas_udf(T.ArrayType(T.StringType()))  # type: ignore[call-overload]
    def shingles_udf(batch: pd.Series) -> pd.Series:
        from udfs.sentences import shingles

        return pd.Series([shingles(t, size) for t in batch], index=batch.index, dtype=object)

    shingled = sentences.select("sentence_id", shingles_udf("text").alias("shingles")).where(F.size("shingles") > 0)
    vectors = HashingTF(inputCol="shingles", outputCol="features", numFeatures=cfg.num_features, binary=True)
    featured = vectors.transform(shingled)
    lsh = MinHashLSH(
        inputCol="features", outputCol="hashes", numHashTables=cfg.bands * cfg.rows_per_band, seed=cfg.seed
    )
    hashed = lsh.fit(featured).transform(featured).localCheckpoint(eager=True)
    values = hashed.select(
        "sentence_id", F.transform("hashes", lambda v: vector_to_array(v)[0].cast("long")).alias("h")
    )
    bands = band_buckets(values, cfg.bands, cfg.rows_per_band)
    leaders = bands.groupBy("band", "bucket").agg(F.min("sentence_id").alias("src"))
    candidates = (
        bands.join(leaders, ["band", "bucket"])
        .where(F.col("sentence_id") != F.col("src"))
        .select("src", F.col("sentence_id").alias("dst"))
        .distinct()
    )
    sets = hashed.select("sentence_id", "shingles")
    inter = F.size(F.array_intersect("a.shingles", "b.shingles"))
    union = F.size(F.array_union("a.shingles", "b.shingles"))
    return (
        candidates.join(sets.alias("a"), F.col("src") == F.col("a.sentence_id"))
        .join(sets.alias("b"), F.col("dst") == F.col("b.sentence_id"))
        .select("src", "dst", (inter / union).alias("jaccard"))
        .where(F.col("jaccard") >= cfg.min_jaccard)
    )


def merge_duplicates(sentences: DataFrame, pairs: DataFrame, reason: str) -> tuple[DataFrame, DataFrame]:
    """Group sentences connected by ``pairs`` (union-find) and keep one per group: (kept, rejects).

    The representative is the sentence with the most occurrences, then the smallest id; it takes the union of
    the group's documents and the sum of its occurrences. The others become rejects with ``reason`` and
    ``duplicate_of`` = the representative. Sentences in no pair pass through untouched.
    """
    pairs = pairs.select("src", "dst").localCheckpoint(eager=True)
    empty_rejects = _as_rejects(sentences.limit(0), reason, F.lit(None).cast("string"))
    if pairs.limit(1).count() == 0:
        return sentences.select(*SILVER_SENTENCES.columns), empty_rejects
    members = pairs.select(F.col("src").alias("sentence_id")).union(pairs.select(F.col("dst").alias("sentence_id")))
    paired = sentences.join(members.distinct(), "sentence_id", "left_semi")
    alone = sentences.join(members.distinct(), "sentence_id", "left_anti")
    grouped = group_duplicates(paired, pairs, "sentence_id", [F.desc("n_occurrences")])
    kept, rejects = _merge_groups(grouped, reason)
    return kept.unionByName(alone.select(*SILVER_SENTENCES.columns)), rejects


def _merge_groups(grouped: DataFrame, reason: str) -> tuple[DataFrame, DataFrame]:
    """Representatives (with their group's documents and occurrences) and the other members as rejects."""
    grouped = grouped.localCheckpoint(eager=True)
    kept, others = merge_into_representatives(grouped, "sentence_id", unions=("doc_ids",), sums=("n_occurrences",))
    return kept.select(*SILVER_SENTENCES.columns), _as_rejects(others, reason, F.col("representative"))


# ---------------------------------------------------------------------------------------------------------------
# The stage


def extract_sentences(texts: DataFrame, cfg: ExtractSentencesConfig) -> tuple[DataFrame, DataFrame, DataFrame]:
    """bronze.texts rows -> (silver.sentences rows, silver.sentence_rejects rows, silver.sentence_phrases rows of
    every sentence the CAT filter parsed, kept or not)."""
    distinct = group_occurrences(split_occurrences(texts, cfg))
    kept, rejects, phrases = filter_sentences(distinct, cfg)
    if cfg.near_dedup.enabled:
        kept = kept.localCheckpoint(eager=True)
        kept, near = merge_duplicates(kept, near_duplicate_pairs(kept, cfg.near_dedup), "near_duplicate")
        rejects = rejects.unionByName(near)
    return kept, rejects, phrases


def sentence_funnel(lakehouse: Lakehouse) -> list[FunnelStep]:
    """Funnel steps from the written tables (occurrences through the filters, distinct sentences after).

    Occurrences entering the filters = the occurrences of filter rejects + those held by silver.sentences
    (near duplicates hand theirs to their representative).
    """
    rejects = lakehouse.read(SILVER_SENTENCE_REJECTS)
    by_step = {
        r["step"]: (int(r["n"]), int(r["occ"]))
        for r in rejects.groupBy("step").agg(F.count("*").alias("n"), F.sum("n_occurrences").alias("occ")).collect()
    }
    kept = lakehouse.read(SILVER_SENTENCES).agg(F.count("*").alias("n"), F.sum("n_occurrences").alias("occ")).first()
    assert kept is not None
    n_final, occ_final = int(kept["n"]), int(kept["occ"] or 0)
    n_near = by_step.get("near_dedup", (0, 0))[0]
    occurrences = occ_final + sum(occ for step, (_, occ) in by_step.items() if step in STEP_OF_REASON.values())
    steps = []
    for step, _ in FILTER_STEPS:
        dropped = by_step.get(step, (0, 0))[1]
        steps.append(FunnelStep(step, occurrences, occurrences - dropped))
        occurrences -= dropped
    distinct = n_final + n_near
    steps.append(FunnelStep("exact_dedup", occurrences, distinct))
    steps.append(FunnelStep("near_dedup", distinct, n_final))
    return steps


def run_extract_sentences(lakehouse: Lakehouse, cfg: Config) -> SentencesSummary:
    """Read bronze.texts, write silver.sentences, silver.sentence_rejects, silver.sentence_phrases and the stage's
    funnel rows."""
    problems = check_references(cfg)  # a config built in code has not been through load_config
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(f"{key}: {why}" for key, why in problems))
    scfg = cfg.extract_sentences
    texts = lakehouse.read(BRONZE_TEXTS).select("doc_id", "position", "text")
    kept, rejects, phrases = extract_sentences(texts, scfg)
    kept = kept.localCheckpoint(eager=True)
    # Rejects and phrases first: the sentences table, written last, marks a complete run.
    lakehouse.overwrite(SILVER_SENTENCE_REJECTS, rejects.select(*SILVER_SENTENCE_REJECTS.columns))
    kept_phrases = phrases.join(kept.select("sentence_id"), "sentence_id", "left_semi")
    lakehouse.overwrite(SILVER_SENTENCE_PHRASES, kept_phrases.select(*SILVER_SENTENCE_PHRASES.columns))
    lakehouse.overwrite(SILVER_SENTENCES, kept.select(*SILVER_SENTENCES.columns))
    steps = sentence_funnel(lakehouse)
    write_funnel(lakehouse, STAGE, steps)
    # Embeddings of sentences no longer extracted go; those of semantic duplicates stay (in silver.sentences here).
    prune_embeddings(lakehouse, SILVER_SENTENCE_EMBEDDINGS, lakehouse.read(SILVER_SENTENCES), "sentence_id")
    summary = SentencesSummary(
        steps=tuple(steps),
        sentences=steps[-1].rows_out,
        rejected_sentences=lakehouse.read(SILVER_SENTENCE_REJECTS).count(),
    )
    return summary
