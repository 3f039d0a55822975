"""Bronze ingest: OBELICS and MMC4 dumps -> documents, texts and image references, with every bad input rejected.

Both layouts are first read into one document shape (:mod:`realsyn.document_layouts`); validation then works on
that shape, so each check is written once.

Unreadable files: an input file that Spark cannot read (a truncated ``.jsonl.gz``, a non-parquet file in a parquet
folder, a shard whose columns have other types) becomes one reject row of kind ``file`` (reason
``unreadable_file``, the error in ``detail``), and the other files of the input are ingested. Once the file is
fixed (or replaced), the next ingest run reads it and removes its ``file`` reject row.

Retry safety: texts and image references are MERGEd on (doc_id, position) before the documents themselves, so
the documents table marks what is complete. A document already in bronze is skipped, which also makes
re-ingesting a dump (or ingesting an overlapping one) add nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from realsyn.config import ConfigError
from realsyn.config_sections import Config, IngestConfig
from realsyn.contracts import BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS, BRONZE_TEXTS
from realsyn.document_layouts import Limits, read_documents
from realsyn.funnel import FunnelStep, first_reason, write_funnel
from realsyn.ids import stable_id_col
from realsyn.input_files import failed_file, list_input_files
from realsyn.tables import Lakehouse

log = logging.getLogger(__name__)

UNREADABLE_FILE = "unreadable_file"
# Each unreadable file costs one more attempt at the read; a run with more than this many stops.
MAX_UNREADABLE_FILES = 1_000


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest run read and did with it: documents read = new + already present + rejected."""

    documents_read: int
    documents_new: int
    documents_already_present: int
    documents_rejected: int

    def __str__(self) -> str:
        return (
            f"documents read {self.documents_read:,} = new {self.documents_new:,} "
            f"+ already present {self.documents_already_present:,} + rejected {self.documents_rejected:,}"
        )


# ---------------------------------------------------------------------------------------------------------
# Validation.


def validate(docs: DataFrame, cfg: IngestConfig) -> DataFrame:
    """Add doc_id and ``reject_reason`` (null = keep) to normalised documents.

    A document without a URL gets its id from its content. Of several documents with the same id in one run,
    the one with the smallest (input file, content) is kept and the others are rejected as duplicates.
    """
    content_key = F.sha2(F.col("raw"), 256)
    with_id = docs.withColumn(
        "doc_id",
        F.when(
            F.coalesce(F.length("url"), F.lit(0)) > 0,
            stable_id_col("source", "url"),
        ).otherwise(stable_id_col(F.col("source"), F.concat(F.lit("sha256:"), content_key))),
    )
    rank = F.row_number().over(Window.partitionBy("doc_id").orderBy("input_file", content_key))
    n_texts = F.col("n_texts")
    n_images = F.col("n_images")
    reason = first_reason(
        [
            (F.col("parse_reason").isNotNull(), "__parse__"),
            (F.col("layout_reason").isNotNull(), "__layout__"),
            ((n_texts == 0) & (n_images == 0), "empty_document"),
            (n_images > cfg.max_images_per_document, "too_many_images"),
            (n_texts > cfg.max_texts_per_document, "too_many_texts"),
        ]
    )
    reason = (
        F.when(reason == "__parse__", F.col("parse_reason"))
        .when(reason == "__layout__", F.col("layout_reason"))
        .otherwise(reason)
    )
    # Duplicates are decided among otherwise valid documents only.
    valid_rank = F.when(reason.isNull(), rank)
    return with_id.withColumn("reject_reason", reason).withColumn(
        "reject_reason",
        F.when(F.col("reject_reason").isNull() & (valid_rank > 1), F.lit("duplicate_document")).otherwise(
            F.col("reject_reason")
        ),
    )


# A text of nothing but white space (tabs, line breaks, U+00A0, U+3000 and the other Unicode separators) and
# zero-width characters (U+200B-U+200D, U+2060, U+FEFF, U+180E).
_BLANK_TEXT = r"^[\p{IsWhite_Space}\p{Z}\x{200B}-\x{200D}\x{2060}\x{FEFF}\x{180E}]++$"


def _texts(docs: DataFrame, cfg: IngestConfig) -> DataFrame:
    exploded = docs.select("doc_id", "source", "input_file", F.explode("texts").alias("t")).select(
        "doc_id", "source", "input_file", "t.position", "t.text", "t.json_type"
    )
    json_type = F.col("json_type")
    reason = first_reason(
        [
            (F.col("text").isNull(), "null_text"),
            # A number or an object in a list of texts is not a text ("2.5" would be kept as one otherwise).
            (json_type.isNotNull() & ~json_type.isin("STRING", "VOID"), "non_string_text"),
            (F.instr("text", "\u0000") > 0, "nul_in_text"),
            (F.col("text") == "", "empty_text"),
            (F.col("text").rlike(_BLANK_TEXT), "blank_text"),
            (F.length("text") > cfg.max_text_chars, "text_too_large"),
        ]
    )
    return exploded.withColumn("reject_reason", reason).withColumn(
        "detail",
        F.when(
            F.col("reject_reason") == "non_string_text",
            F.concat(F.lit("JSON type "), F.regexp_extract(json_type, "^[A-Z]+", 0)),
        ),
    )


def _image_refs(docs: DataFrame) -> DataFrame:
    exploded = docs.select(
        "doc_id", "source", "input_file", F.size("texts").alias("n_texts"), F.explode("images").alias("i")
    ).select("doc_id", "source", "input_file", "n_texts", "i.*")
    index = F.col("matched_text_index")
    reason = first_reason(
        [
            (F.col("url").isNull() | (F.trim("url") == ""), "missing_url"),
            (index.isNotNull() & ((index < 0) | (index >= F.col("n_texts"))), "matched_text_index_out_of_range"),
        ]
    )
    return (
        exploded.withColumn("url", F.trim("url"))
        .withColumn("url_id", stable_id_col("url"))
        .withColumn("reject_reason", reason)
        .drop("n_texts")
    )


def _rejects(df: DataFrame, kind: str, raw: Column, raw_chars: int) -> DataFrame:
    """Rows with a reject_reason, in the reject table's shape (keyed by source, kind, document, position)."""
    position = F.col("position") if "position" in df.columns else F.lit(None).cast("int")
    if "line_key" in df.columns:  # one input line each: two identical broken lines are two rejects
        key = stable_id_col(F.col("source"), F.lit(kind), F.col("input_file"), F.col("line_key"))
    else:
        key = stable_id_col(F.col("source"), F.lit(kind), F.col("doc_id"), position.cast("string"), F.col("input_file"))
    return df.filter(F.col("reject_reason").isNotNull()).select(
        key.alias("reject_id"),
        "source",
        "input_file",
        F.lit(kind).alias("kind"),
        "doc_id",
        position.alias("position"),
        F.col("reject_reason").alias("reason"),
        F.substring(F.make_valid_utf8(raw), 1, raw_chars).alias("raw"),
        (F.col("detail") if "detail" in df.columns else F.lit(None).cast("string")).alias("detail"),
    )


def _line_keys(docs: DataFrame) -> DataFrame:
    """The rejected documents with ``line_key``: the first byte of the file split the line is in, and the line's
    number within that split (the parquet row index for parquet), so every input line has a key of its own."""
    rejected = docs.filter(F.col("reject_reason").isNotNull())
    firsts = docs.groupBy("input_file", "block_start").agg(F.min("row_seq").alias("first_seq"))
    return rejected.join(firsts, ["input_file", "block_start"]).withColumn(
        "line_key", F.concat_ws(":", F.col("block_start"), F.col("row_seq") - F.col("first_seq"))
    )


def _file_rejects(spark: SparkSession, bad: dict[tuple[str, str], str], raw_chars: int) -> DataFrame:
    rows = [(source, path, error[: max(raw_chars, 200)]) for (source, path), error in sorted(bad.items())]
    df = spark.createDataFrame(rows, "source string, input_file string, detail string")
    return df.select(
        stable_id_col(F.col("source"), F.lit("file"), F.col("input_file")).alias("reject_id"),
        "source",
        "input_file",
        F.lit("file").alias("kind"),
        F.lit(None).cast("string").alias("doc_id"),
        F.lit(None).cast("int").alias("position"),
        F.lit(UNREADABLE_FILE).alias("reason"),
        F.lit(None).cast("string").alias("raw"),
        "detail",
    )


def read_all(spark: SparkSession, icfg: IngestConfig) -> tuple[DataFrame, dict[tuple[str, str], str], list[str]]:
    """Validated documents of every readable input file (persisted), the unreadable files ``{(source, file):
    error}`` and the files read.

    Spark reads lazily, so a corrupt file shows only when the read runs: the documents are read and counted; a
    failure that names one input file sets that file aside and reads again without it.
    """
    listed = list_input_files(spark, icfg.inputs)
    limits = Limits(icfg.max_texts_per_document, icfg.max_images_per_document)
    bad: dict[tuple[str, str], str] = {}
    while True:
        readable = [
            [f for f in files if (inp.source, f) not in bad] for inp, files in zip(icfg.inputs, listed, strict=True)
        ]
        docs: DataFrame | None = None
        try:  # Spark looks for the files when the read is planned: a file gone since the listing fails there
            parts = [
                read_documents(spark, inp, limits, files)
                for inp, files in zip(icfg.inputs, readable, strict=True)
                if files
            ]
            if not parts:  # every file unreadable: no documents, with the columns of the documents
                first = next((i for i, files in enumerate(listed) if files), None)
                inp = icfg.inputs[first or 0]
                parts = [read_documents(spark, inp, limits, listed[first][:1] if first is not None else None).limit(0)]
            docs = parts[0]
            for more in parts[1:]:
                docs = docs.unionByName(more)
            docs = validate(docs, icfg).persist(StorageLevel.MEMORY_AND_DISK)
            docs.count()
        except Exception as e:  # only a failure that names an input file is handled
            if docs is not None:
                docs.unpersist()
            candidates = [(inp.source, f) for inp, files in zip(icfg.inputs, readable, strict=True) for f in files]
            path = failed_file(e, [f for _, f in candidates])
            if path is None or len(bad) >= MAX_UNREADABLE_FILES:
                raise
            source = next(src for src, f in candidates if f == path)
            bad[(source, path)] = _error_line(e)
            log.warning("ingest: %s is unreadable, set aside: %s", path, bad[(source, path)])
            continue
        return docs, bad, [f for files in readable for f in files]


def _error_line(error: Exception) -> str:
    """The root cause of a Spark failure in one line (the JVM stack trace left out)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith(("Caused by:", "java.", "org.", "[")) and "\tat " not in line]
    cause = next((c for c in reversed(causes) if c.startswith("Caused by:")), causes[0] if causes else lines[0])
    return cause.removeprefix("Caused by: ")[:1000]


def run_ingest(lakehouse: Lakehouse, cfg: Config) -> IngestSummary:
    """Ingest every configured input into the bronze tables and return what was read, added and rejected."""
    spark = lakehouse.spark
    icfg = cfg.ingest
    if not icfg.inputs:
        raise ConfigError("ingest.inputs: no input configured")
    docs, bad, read = read_all(spark, icfg)
    try:
        return _write(lakehouse, docs, icfg, bad, read)
    finally:
        docs.unpersist()


def _write(
    lakehouse: Lakehouse,
    docs: DataFrame,
    icfg: IngestConfig,
    bad: dict[tuple[str, str], str] | None = None,
    read: list[str] | None = None,
) -> IngestSummary:
    present = (
        lakehouse.read(BRONZE_DOCUMENTS).select("doc_id")
        if lakehouse.exists(BRONZE_DOCUMENTS)
        else lakehouse.spark.createDataFrame([], "doc_id string")
    )
    valid = docs.filter(F.col("reject_reason").isNull())
    new = valid.join(present, "doc_id", "left_anti")
    texts = _texts(new, icfg)
    images = _image_refs(new)
    # Counted before writing: the tables read above change with the writes below.
    by_outcome = docs.groupBy(F.col("reject_reason").isNull().alias("ok")).count().collect()
    counts = {r["ok"]: int(r["count"]) for r in by_outcome}
    n_already = valid.join(present, "doc_id", "left_semi").count()
    summary = IngestSummary(
        documents_read=counts.get(True, 0) + counts.get(False, 0),
        documents_new=counts.get(True, 0) - n_already,
        documents_already_present=n_already,
        documents_rejected=counts.get(False, 0),
    )

    chars = icfg.raw_chars_in_rejects
    fields = images.filter(F.col("reject_reason").isNull() & F.col("field_reason").isNotNull()).select(
        "doc_id",
        "source",
        "input_file",
        "position",
        "url",
        F.col("field_reason").alias("reject_reason"),
        F.col("field_detail").alias("detail"),
    )
    rejects = (
        _rejects(_line_keys(docs), "document", F.col("raw"), chars)
        .unionByName(_rejects(fields, "field", F.col("url"), chars))
        .unionByName(_rejects(texts, "text", F.col("text"), chars))
        .unionByName(_rejects(images, "image", F.col("url"), chars))
        .unionByName(_file_rejects(lakehouse.spark, bad or {}, chars))
        .dropDuplicates(["reject_id"])
    )
    if read and lakehouse.exists(BRONZE_INGEST_REJECTS):
        # A file rejected by an earlier run that reads now (fixed or replaced) is no longer a reject.
        fixed = lakehouse.spark.createDataFrame([(f,) for f in read], "input_file string")
        lakehouse.delta(BRONZE_INGEST_REJECTS).alias("t").merge(
            fixed.alias("s"), "t.kind = 'file' AND t.input_file = s.input_file"
        ).whenMatchedDelete().execute()
    lakehouse.insert_new(BRONZE_INGEST_REJECTS, rejects)
    kept_texts = texts.filter(F.col("reject_reason").isNull()).select("doc_id", "position", "text")
    lakehouse.insert_new(BRONZE_TEXTS, kept_texts)
    kept_images = images.filter(F.col("reject_reason").isNull()).select(
        "doc_id", "position", "url", "url_id", "alt_text", "matched_text_index", "matched_sim", "meta"
    )
    lakehouse.insert_new(BRONZE_IMAGE_REFS, kept_images)
    # Written last: a document row means its texts and image references are complete.
    documents = new.select(
        "doc_id",
        "source",
        "layout",
        "url",
        "input_file",
        F.size("texts").alias("n_texts"),
        F.size("images").alias("n_images"),
        "meta",
    )
    lakehouse.insert_new(BRONZE_DOCUMENTS, documents)

    write_funnel(lakehouse, "ingest", ingest_funnel(lakehouse))
    return summary


def ingest_funnel(lakehouse: Lakehouse) -> list[FunnelStep]:
    """Rows in and kept per bronze table, from the tables themselves (so reruns and increments agree)."""
    rejected = {
        r["kind"]: int(r["count"]) for r in lakehouse.read(BRONZE_INGEST_REJECTS).groupBy("kind").count().collect()
    }
    steps = []
    for step, table, kind in (
        ("documents", BRONZE_DOCUMENTS, "document"),
        ("texts", BRONZE_TEXTS, "text"),
        ("image_refs", BRONZE_IMAGE_REFS, "image"),
    ):
        kept = lakehouse.read(table).count()
        steps.append(FunnelStep(step, kept + rejected.get(kind, 0), kept))
    return steps
