"""The tagger's vocabulary: the base tag list and the nouns / noun phrases mined from the sentences, with the number
of sentences holding each (read from silver.sentence_phrases where the extraction's parse stored them, else
udfs.tagger in ``mapInPandas``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.config_sections import GenerateConfig


def mined_tag_counts(sentences: DataFrame, parser: str, batch_size: int, stored: DataFrame | None = None) -> DataFrame:
    """(tag, frequency): how many sentences hold each noun / noun phrase (udfs.tagger.doc_phrases).

    ``stored``: silver.sentence_phrases, the phrases the extraction's CAT parse read; a sentence with a row there by
    the same ``parser`` is not parsed again, the others are parsed here.
    """
    schema = T.StructType([T.StructField("sentence_id", T.StringType()), T.StructField("tag", T.StringType())])

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.tagger import mine_phrases

        for frame in frames:
            phrases = mine_phrases(frame["text"].fillna("").tolist(), parser, batch_size)
            ids = [i for i, found in zip(frame["sentence_id"], phrases, strict=True) for _ in found]
            yield pd.DataFrame({"sentence_id": ids, "tag": [p for found in phrases for p in found]})

    texts = sentences.select("sentence_id", "text")
    if stored is None:
        found = texts.mapInPandas(run, schema)
    else:
        known = stored.where(F.col("parser") == parser).select("sentence_id", "phrases")
        read = texts.join(known, "sentence_id").select("sentence_id", F.explode("phrases").alias("tag"))
        found = read.unionByName(texts.join(known, "sentence_id", "left_anti").mapInPandas(run, schema))
    return found.distinct().groupBy("tag").agg(F.count(F.lit(1)).cast("long").alias("frequency"))


def tag_vocabulary(sentences: DataFrame, gcfg: GenerateConfig, stored: DataFrame | None = None) -> DataFrame:
    """(tag, source, frequency): the base list (frequency = sentences holding it) and the ``mined_top_n`` most
    frequent mined tags with at least ``min_document_frequency`` sentences that are not in the base list (ties in
    frequency go to the smaller tag). ``stored``: silver.sentence_phrases (see :func:`mined_tag_counts`)."""
    from udfs.tagger import base_tags

    tcfg = gcfg.tags
    spark = sentences.sparkSession
    base = spark.createDataFrame([(t,) for t in (base_tags() if tcfg.base else [])], "tag string")
    counts = mined_tag_counts(sentences, tcfg.parser, tcfg.parse_batch_size, stored)
    base_rows = base.join(counts, "tag", "left").select(
        "tag", F.lit("base").alias("source"), F.coalesce("frequency", F.lit(0)).cast("long").alias("frequency")
    )
    mined = (
        counts.filter(F.col("frequency") >= tcfg.min_document_frequency)
        .join(base, "tag", "left_anti")
        .orderBy(F.col("frequency").desc(), F.col("tag"))
        .limit(tcfg.mined_top_n)
        .select("tag", F.lit("mined").alias("source"), "frequency")
    )
    return base_rows.unionByName(mined)
