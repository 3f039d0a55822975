"""Concept-balanced scales in Spark: which concepts each pair has, a sampling key per pair, the smallest keys, and
the counts per concept read back from gold.concept_counts.

Two ways to balance a scale by what its pairs show rather than by image clusters (``balance.scales.<name>.by``):

- ``entries`` (MetaCLIP, Xu et al. 2024): the entries of a vocabulary (the generate stage's tags of
  ``silver.tags``, or a file of one entry per line) matched in a pair's four texts, whole words and case-folded:
  texts and entries are cut into lower-case word tokens (letters and digits; everything else separates) and every
  n-gram of a text, n up to the longest entry, is joined with the vocabulary; no Python runs per row. An entry
  matched by ``count_e`` pairs keeps each with probability ``min(1, t / count_e)`` and a pair survives if any of
  its entries keeps it. The key of a pair is the ``t*`` of :func:`udfs.concepts.entry_thresholds`: in the scale of
  ``t`` exactly when ``t* < t``, so a target size keeps the pairs of the ``target`` smallest keys.
- ``concepts`` (inverse concept frequency, LLaVA-OneVision-1.5): an image's concepts are its top-K tags of
  ``gold.image_tags``; its weight is the mean of ``1 / count_c`` over them (``count_c``: images with concept c);
  ``target`` images are drawn without replacement with probability proportional to weight (Efraimidis and
  Spirakis: key ``-ln(u) / w``, the smallest keys win).

``u`` is a uniform in (0, 1) from xxhash64 of the image id and the seed, so a rerun draws the same pairs. A pair
with no concept is dropped (``unmatched: drop``, as MetaCLIP) or counts as one more concept ``<unmatched>``
(``unmatched: own_entry``). The ``target`` smallest keys are found without sorting everything on one node: an
approximate quantile brackets the boundary, and only the rows inside the bracket reach the driver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.contracts import GOLD_CONCEPT_COUNTS
from realsyn.tables import Lakehouse
from udfs.concepts import entry_thresholds

UNMATCHED = "<unmatched>"
WORD_SEPARATOR = r"[^\p{L}\p{N}]+"
# Rows the exact top-n search may bring to the driver (the bracket around the boundary).
BRACKET_ROWS = 200_000
_MANTISSA = (1 << 53) - 1


def normalized(text: Column) -> Column:
    """``text`` as the matcher sees it: lower-case word tokens (letters and digits) joined by single spaces."""
    spaced = F.regexp_replace(F.lower(F.coalesce(text, F.lit(""))), WORD_SEPARATOR, " ")
    return F.trim(spaced)


def ngrams(texts: list[Column], max_words: int) -> Column:
    """The distinct n-grams (n = 1..max_words, tokens joined by single spaces) of every text, none across two.

    Plain expressions, no lambda functions (Spark interprets those row by row): the texts are normalized and joined
    by `` | `` (a token no normalized entry contains), unigrams are a split, and the n-grams starting at every token
    are the overlapping matches of a lookahead.
    """
    joined = F.concat_ws(" | ", *[F.nullif(normalized(t), F.lit("")) for t in texts])
    grams = [F.split(joined, " ")]
    for n in range(2, max_words + 1):
        grams.append(F.regexp_extract_all(joined, F.lit(rf"(?:^| )(?=(\S+(?: \S+){{{n - 1}}}))"), F.lit(1)))
    return F.array_distinct(F.flatten(F.array(*grams)))


def vocabulary(entries: DataFrame, column: str = "entry") -> tuple[DataFrame, int]:
    """(entries normalized and distinct, as column ``concept``; the most words of one entry)."""
    vocab = (
        entries.select(normalized(F.col(column)).alias("concept"))
        .filter(F.col("concept") != "")
        .distinct()
        .localCheckpoint(eager=True)
    )
    longest = vocab.agg(F.max(F.size(F.split("concept", " "))).alias("n")).first()
    return vocab, int(longest["n"] or 0) if longest is not None else 0


def entry_matches(pairs: DataFrame, text_columns: list[str], vocab: DataFrame, max_words: int) -> DataFrame:
    """(image_id, concept): each vocabulary entry found in any of a pair's texts, once per pair."""
    if max_words == 0:
        return pairs.sparkSession.createDataFrame([], "image_id string, concept string")
    grams = ngrams([F.col(c) for c in text_columns], max_words)
    candidates = pairs.select("image_id", F.explode(grams).alias("concept"))
    return candidates.join(vocab, "concept").select("image_id", "concept")


def tag_concepts(image_tags: DataFrame, model_id: str, top_k: int) -> DataFrame:
    """(image_id, concept): an image's ``top_k`` best tags of gold.image_tags under ``model_id``."""
    return image_tags.filter(F.col("model_id") == model_id).select(
        "image_id", F.explode(F.slice("tags", 1, top_k)).alias("concept")
    )


def uniform(image_id: Column, seed: int) -> Column:
    """A uniform draw in (0, 1) from xxhash64 of the id and the seed (53 bits, never 0 or 1)."""
    return (F.xxhash64(image_id, F.lit(seed)).bitwiseAND(F.lit(_MANTISSA)) + F.lit(0.5)) / F.lit(float(1 << 53))


def with_unmatched(ids: DataFrame, matches: DataFrame, unmatched: str) -> DataFrame:
    """``matches`` plus (id, ``<unmatched>``) for every id of ``ids`` without one when ``unmatched`` is own_entry."""
    if unmatched == "drop":
        return matches
    lonely = ids.select("image_id").join(matches.select("image_id"), "image_id", "left_anti")
    return matches.unionByName(lonely.select("image_id", F.lit(UNMATCHED).alias("concept")))


def concept_counts(matches: DataFrame) -> DataFrame:
    """(concept, count): pairs per concept."""
    return matches.groupBy("concept").agg(F.count(F.lit(1)).alias("count"))


@F.pandas_udf(T.DoubleType())  # type: ignore[call-overload]
def _entry_key(counts: pd.Series, u: pd.Series) -> pd.Series:
    return pd.Series(entry_thresholds(list(counts), u.to_numpy()))


def entry_keys(ids: DataFrame, matches: DataFrame, seed: int) -> DataFrame:
    """(image_id, key): MetaCLIP's t* of every id (inf for one without a match; see the module doc)."""
    counted = matches.join(concept_counts(matches), "concept")
    per_pair = counted.groupBy("image_id").agg(F.collect_list("count").alias("_counts"))
    return (
        ids.select("image_id")
        .join(per_pair, "image_id", "left")
        .select(
            "image_id",
            _entry_key(F.coalesce("_counts", F.array().cast("array<long>")), uniform(F.col("image_id"), seed)).alias(
                "key"
            ),
        )
    )


def concept_keys(ids: DataFrame, matches: DataFrame, seed: int) -> DataFrame:
    """(image_id, key): ``-ln(u) / w`` with w the mean inverse count of the id's concepts (inf without any)."""
    counted = matches.join(concept_counts(matches), "concept")
    weights = counted.groupBy("image_id").agg(F.avg(F.lit(1.0) / F.col("count")).alias("_w"))
    key = -F.log(uniform(F.col("image_id"), seed)) / F.col("_w")
    return (
        ids.select("image_id")
        .join(weights, "image_id", "left")
        .select("image_id", F.when(F.col("_w").isNull(), F.lit(math.inf)).otherwise(key).alias("key"))
    )


@dataclass(frozen=True)
class Cut:
    """The last (key, image_id) in a scale: members are the rows at or below it in (key, image_id) order."""

    key: float
    image_id: str

    def member(self) -> Column:
        """Whether a row of columns ``key`` and ``image_id`` is in the scale."""
        return (F.col("key") < F.lit(self.key)) | (
            (F.col("key") == F.lit(self.key)) & (F.col("image_id") <= F.lit(self.image_id))
        )


def smallest(keys: DataFrame, n: int) -> Cut | None:
    """The cut that keeps the ``n`` rows of smallest finite (key, image_id) of ``keys``; None keeps every finite row.

    ``keys`` (image_id, key) should be checkpointed: it is read three times. An approximate quantile of relative
    error eps brackets the n-th key; rows below the bracket are counted, rows inside (about 4 eps of all) collected
    and sorted here. A bracket that misses (the quantile's guarantee is probabilistic in merges) widens and retries.
    """
    finite = keys.filter(~F.isnan("key") & (F.col("key") < F.lit(math.inf)))
    total = finite.count()
    if n >= total:
        return None
    if n <= 0:
        return Cut(-math.inf, "")
    eps = min(0.25, max(1e-6, BRACKET_ROWS / (4 * total)))
    while True:
        q = n / total
        lo_q, hi_q = max(0.0, q - 2 * eps), min(1.0, q + 2 * eps)
        lo, hi = finite.approxQuantile("key", [lo_q, hi_q], eps)
        if lo_q == 0.0:
            lo = -math.inf
        below = finite.filter(F.col("key") < F.lit(lo)).count()
        inside = (
            finite.filter((F.col("key") >= F.lit(lo)) & (F.col("key") <= F.lit(hi)))
            .select("key", "image_id")
            .toPandas()
        )
        need = n - below
        if 0 < need <= len(inside):
            inside = inside.sort_values(["key", "image_id"], kind="stable")
            row = inside.iloc[need - 1]
            return Cut(float(row["key"]), str(row["image_id"]))
        if eps >= 0.25:  # the bracket is everything: cannot miss
            raise RuntimeError(f"top-{n} search lost rows: {below} below the bracket, {len(inside)} inside")
        eps = min(0.25, eps * 4)


def threshold_cut(t: float) -> Cut:
    """The cut of a fixed MetaCLIP ``t``: every pair whose t* lies below it."""
    return Cut(float(np.nextafter(t, -math.inf)), "\U0010ffff")


def concept_distributions(lakehouse: Lakehouse) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """Per scale of gold.concept_counts: (by, pairs per concept before, after), in rank order (none without)."""
    if not lakehouse.exists(GOLD_CONCEPT_COUNTS):
        return {}
    table = lakehouse.read(GOLD_CONCEPT_COUNTS).select("scale", "by", "rank", "count_before", "count_after")
    out = {}
    for name, rows in table.toPandas().sort_values(["scale", "rank"]).groupby("scale"):
        before = rows["count_before"].to_numpy(np.int64)
        out[str(name)] = (str(rows["by"].iloc[0]), before, rows["count_after"].to_numpy(np.int64))
    return out
