"""Bronze ingest: OBELICS and MMC4 dumps -> documents, texts and image references, with every bad input rejected.

Both layouts are first normalised to one document shape (source, url, texts with positions, images with
positions); validation then works on that shape, so each check is written once.

Positions: in OBELICS a position is the index in the interleaved ``texts`` / ``images`` lists. In MMC4 texts and
images are separate lists, so a text's position is its index in ``text_list`` and an image's position is its
index in ``image_info``; ``matched_text_index`` links an MMC4 image to its text.

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
from pyspark.sql import types as T
from pyspark.sql.window import Window

from realsyn.config import Config, ConfigError, IngestConfig, IngestInput
from realsyn.funnel import FunnelStep, first_reason, write_funnel
from realsyn.ids import stable_id_col
from realsyn.tables import (
    BRONZE_DOCUMENTS,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    BRONZE_TEXTS,
    Lakehouse,
)

log = logging.getLogger(__name__)

_MMC4_IMAGE = T.StructType(
    [
        T.StructField("image_name", T.StringType()),
        T.StructField("raw_url", T.StringType()),
        T.StructField("matched_text_index", T.LongType()),
        T.StructField("matched_sim", T.DoubleType()),
        T.StructField("face_detections", T.StringType()),
    ]
)
MMC4_SCHEMA = T.StructType(
    [
        T.StructField("url", T.StringType()),
        T.StructField("text_list", T.ArrayType(T.StringType())),
        T.StructField("image_info", T.ArrayType(_MMC4_IMAGE)),
        T.StructField("_corrupt", T.StringType()),
    ]
)
OBELICS_SCHEMA = T.StructType(
    [
        T.StructField("images", T.ArrayType(T.StringType())),
        T.StructField("texts", T.ArrayType(T.StringType())),
        T.StructField("metadata", T.StringType()),
        T.StructField("general_metadata", T.StringType()),
        T.StructField("_corrupt", T.StringType()),
    ]
)

TEXT_ITEM = T.StructType([T.StructField("position", T.IntegerType()), T.StructField("text", T.StringType())])
IMAGE_ITEM = T.StructType(
    [
        T.StructField("position", T.IntegerType()),
        T.StructField("url", T.StringType()),
        T.StructField("alt_text", T.StringType()),
        T.StructField("matched_text_index", T.IntegerType()),
        T.StructField("matched_sim", T.DoubleType()),
        T.StructField("meta", T.StringType()),
    ]
)

REJECTS_SCHEMA = T.StructType(
    [
        T.StructField("reject_id", T.StringType(), False),
        T.StructField("source", T.StringType()),
        T.StructField("input_file", T.StringType()),
        T.StructField("kind", T.StringType()),
        T.StructField("doc_id", T.StringType()),
        T.StructField("position", T.IntegerType()),
        T.StructField("reason", T.StringType()),
        T.StructField("raw", T.StringType()),
    ]
)


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
# Reading: one row per input record with its raw text and a parse failure reason (or null).


def _read_jsonl(spark: SparkSession, inp: IngestInput, schema: T.StructType) -> DataFrame:
    lines = (
        spark.read.text(inp.path)
        .select(F.col("value").alias("raw"), F.col("_metadata.file_path").alias("input_file"))
        .filter(F.trim("raw") != "")
    )
    parsed = lines.withColumn(
        "rec", F.from_json("raw", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    )
    trimmed = F.trim("raw")
    reason = first_reason(
        [
            (~F.is_valid_utf8("raw"), "invalid_utf8"),
            (trimmed == "null", "null_document"),
            (F.get_json_object("raw", "$").isNull(), "malformed_json"),
            (~trimmed.startswith("{"), "not_a_json_object"),
            (F.col("rec._corrupt").isNotNull(), "schema_mismatch"),
        ]
    )
    return parsed.withColumn("parse_reason", reason)


def _read_parquet(spark: SparkSession, inp: IngestInput, schema: T.StructType) -> DataFrame:
    df = spark.read.parquet(inp.path)
    fields = []
    for field in schema.fields:
        if field.name == "_corrupt":
            fields.append(F.lit(None).cast("string").alias("_corrupt"))
        elif field.name in df.columns:
            fields.append(F.col(field.name).cast(field.dataType).alias(field.name))
        else:
            fields.append(F.lit(None).cast(field.dataType).alias(field.name))
    rec = F.struct(*fields)
    raw = F.to_json(F.struct(*[F.col(c) for c in df.columns]))
    strings = [F.col(c) for c in ("metadata", "general_metadata") if c in df.columns]
    array_strings = [F.col(c) for c in ("texts", "images") if c in df.columns]
    valid = F.lit(True)
    for col in strings:
        valid = valid & F.coalesce(F.is_valid_utf8(col), F.lit(True))
    for col in array_strings:
        valid = valid & F.coalesce(
            F.forall(col, lambda s: F.coalesce(F.is_valid_utf8(s), F.lit(True))),
            F.lit(True),
        )
    return df.select(
        raw.alias("raw"),
        F.col("_metadata.file_path").alias("input_file"),
        rec.alias("rec"),
        F.when(~valid, F.lit("invalid_utf8")).alias("parse_reason"),
    )


# ---------------------------------------------------------------------------------------------------------
# Normalising both layouts to: url, meta, texts array<TEXT_ITEM>, images array<IMAGE_ITEM>, layout_reason.


def _normalise_mmc4(df: DataFrame) -> DataFrame:
    texts = F.transform(
        F.coalesce(F.col("rec.text_list"), F.array().cast("array<string>")),
        lambda t, i: F.struct(i.cast("int").alias("position"), t.alias("text")),
    )
    images = F.transform(
        F.coalesce(F.col("rec.image_info"), F.array().cast(T.ArrayType(_MMC4_IMAGE))),
        lambda x, i: F.struct(
            i.cast("int").alias("position"),
            x["raw_url"].alias("url"),
            F.lit(None).cast("string").alias("alt_text"),
            x["matched_text_index"].cast("int").alias("matched_text_index"),
            x["matched_sim"].alias("matched_sim"),
            F.to_json(
                F.struct(x["image_name"].alias("image_name"), x["face_detections"].alias("face_detections"))
            ).alias("meta"),
        ),
    )
    return df.select(
        "raw",
        "input_file",
        "parse_reason",
        F.col("rec.url").alias("url"),
        F.lit(None).cast("string").alias("meta"),
        texts.cast(T.ArrayType(TEXT_ITEM)).alias("texts"),
        images.cast(T.ArrayType(IMAGE_ITEM)).alias("images"),
        F.lit(None).cast("string").alias("layout_reason"),
    )


def _normalise_obelics(df: DataFrame) -> DataFrame:
    imgs = F.coalesce(F.col("rec.images"), F.array().cast("array<string>"))
    txts = F.coalesce(F.col("rec.texts"), F.array().cast("array<string>"))
    meta = F.from_json(F.col("rec.metadata"), T.ArrayType(T.StringType()))
    items = F.arrays_zip(imgs.alias("image"), txts.alias("text"))
    indexed = F.transform(
        items,
        lambda x, i: F.struct(i.cast("int").alias("position"), x["image"].alias("image"), x["text"].alias("text")),
    )
    texts = F.transform(
        F.filter(indexed, lambda x: x["text"].isNotNull()),
        lambda x: F.struct(x["position"].alias("position"), x["text"].alias("text")),
    )
    meta_ok = meta.isNotNull() & (F.size(meta) == F.size(imgs))

    def image_item(x: Column) -> Column:
        m = F.when(meta_ok, F.element_at(meta, x["position"] + 1))
        return F.struct(
            x["position"].alias("position"),
            x["image"].alias("url"),
            F.get_json_object(m, "$.alt_text").alias("alt_text"),
            F.lit(None).cast("int").alias("matched_text_index"),
            F.lit(None).cast("double").alias("matched_sim"),
            m.alias("meta"),
        )

    images = F.transform(F.filter(indexed, lambda x: x["image"].isNotNull()), image_item)
    both = F.exists(indexed, lambda x: x["image"].isNotNull() & x["text"].isNotNull())
    neither = F.exists(indexed, lambda x: x["image"].isNull() & x["text"].isNull())
    layout_reason = first_reason(
        [
            (F.size(imgs) != F.size(txts), "unequal_list_lengths"),
            (both, "position_with_text_and_image"),
            (neither, "position_with_neither_text_nor_image"),
        ]
    )
    return df.select(
        "raw",
        "input_file",
        "parse_reason",
        F.get_json_object("rec.general_metadata", "$.url").alias("url"),
        F.col("rec.general_metadata").alias("meta"),
        texts.cast(T.ArrayType(TEXT_ITEM)).alias("texts"),
        images.cast(T.ArrayType(IMAGE_ITEM)).alias("images"),
        layout_reason.alias("layout_reason"),
    )


def read_documents(spark: SparkSession, inp: IngestInput) -> DataFrame:
    """One input dump as normalised documents (not yet validated), with source and layout columns."""
    schema = MMC4_SCHEMA if inp.layout == "mmc4" else OBELICS_SCHEMA
    df = _read_jsonl(spark, inp, schema) if inp.format == "jsonl" else _read_parquet(spark, inp, schema)
    normalised = _normalise_mmc4(df) if inp.layout == "mmc4" else _normalise_obelics(df)
    return normalised.select(F.lit(inp.source).alias("source"), F.lit(inp.layout).alias("layout"), "*")


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
    n_texts = F.size("texts")
    n_images = F.size("images")
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


def _texts(docs: DataFrame, cfg: IngestConfig) -> DataFrame:
    exploded = docs.select("doc_id", "source", "input_file", F.explode("texts").alias("t")).select(
        "doc_id", "source", "input_file", "t.position", "t.text"
    )
    reason = first_reason(
        [
            (F.col("text").isNull(), "null_text"),
            (F.trim("text") == "", "empty_text"),
            (F.length("text") > cfg.max_text_chars, "text_too_large"),
        ]
    )
    return exploded.withColumn("reject_reason", reason)


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
    doc_key = F.coalesce(F.col("doc_id"), F.sha2(F.col("raw"), 256)) if "raw" in df.columns else F.col("doc_id")
    return df.filter(F.col("reject_reason").isNotNull()).select(
        stable_id_col(F.col("source"), F.lit(kind), doc_key, position.cast("string"), F.col("input_file")).alias(
            "reject_id"
        ),
        "source",
        "input_file",
        F.lit(kind).alias("kind"),
        "doc_id",
        position.alias("position"),
        F.col("reject_reason").alias("reason"),
        F.substring(F.make_valid_utf8(raw), 1, raw_chars).alias("raw"),
    )


def _check_inputs(spark: SparkSession, cfg: IngestConfig) -> None:
    """Fail before any work when an input path does not exist."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    for i, inp in enumerate(cfg.inputs):
        path = jvm.org.apache.hadoop.fs.Path(inp.path)
        fs = path.getFileSystem(hadoop_conf)
        matches = fs.globStatus(path)
        if matches is None or len(matches) == 0:
            raise ConfigError(f"ingest.inputs[{i}].path: no such file or folder: {inp.path}")


def run_ingest(lakehouse: Lakehouse, cfg: Config) -> IngestSummary:
    """Ingest every configured input into the bronze tables and return what was read, added and rejected."""
    spark = lakehouse.spark
    icfg = cfg.ingest
    if not icfg.inputs:
        raise ConfigError("ingest.inputs: no input configured")
    _check_inputs(spark, icfg)
    normalised = [read_documents(spark, inp) for inp in icfg.inputs]
    docs = normalised[0]
    for more in normalised[1:]:
        docs = docs.unionByName(more)
    docs = validate(docs, icfg).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _write(lakehouse, docs, icfg)
    finally:
        docs.unpersist()


def _write(lakehouse: Lakehouse, docs: DataFrame, icfg: IngestConfig) -> IngestSummary:
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
    rejects = (
        _rejects(docs, "document", F.col("raw"), chars)
        .unionByName(_rejects(texts, "text", F.col("text"), chars))
        .unionByName(_rejects(images, "image", F.col("url"), chars))
        .dropDuplicates(["reject_id"])
    )
    lakehouse.insert_new(BRONZE_INGEST_REJECTS, rejects, ["reject_id"])
    kept_texts = texts.filter(F.col("reject_reason").isNull()).select("doc_id", "position", "text")
    lakehouse.insert_new(BRONZE_TEXTS, kept_texts, ["doc_id", "position"])
    kept_images = images.filter(F.col("reject_reason").isNull()).select(
        "doc_id", "position", "url", "url_id", "alt_text", "matched_text_index", "matched_sim", "meta"
    )
    lakehouse.insert_new(BRONZE_IMAGE_REFS, kept_images, ["doc_id", "position"])
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
    lakehouse.insert_new(BRONZE_DOCUMENTS, documents, ["doc_id"])

    write_funnel(lakehouse, "ingest", ingest_funnel(lakehouse))
    return summary


def ingest_funnel(lakehouse: Lakehouse) -> list[FunnelStep]:
    """Rows in and kept per bronze table, from the tables themselves (so reruns and increments agree)."""
    rejected = {
        r["kind"]: int(r["count"]) for r in lakehouse.read(BRONZE_INGEST_REJECTS).groupBy("kind").count().collect()
    }
    steps = []
    for step, table, kind in (
        ("ingest documents", BRONZE_DOCUMENTS, "document"),
        ("ingest texts", BRONZE_TEXTS, "text"),
        ("ingest image references", BRONZE_IMAGE_REFS, "image"),
    ):
        kept = lakehouse.read(table).count()
        steps.append(FunnelStep(step, kept + rejected.get(kind, 0), kept))
    return steps
