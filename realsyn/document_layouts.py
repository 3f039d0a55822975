"""The two layouts of interleaved documents, OBELICS and MMC4, read from jsonl or parquet into one document shape.

One row per input record: source, layout, url, meta, the texts with their positions, the images with their
positions, and a parse or layout failure reason (or null), so that validation works on one shape and each check is
written once.

Positions: in OBELICS a position is the index in the interleaved ``texts`` / ``images`` lists. In MMC4 texts and
images are separate lists, so a text's position is its index in ``text_list`` and an image's position is its
index in ``image_info``; ``matched_text_index`` links an MMC4 image to its text.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.config_sections import IngestInput
from realsyn.contracts import STRING, STRINGS, schema
from realsyn.funnel import first_reason
from realsyn.input_files import READ_OPTIONS, path_groups
from realsyn.strict_json import JSON_OPTIONS, not_a_string, one_json_value

_MMC4_IMAGE = schema(
    ("image_name", STRING),
    ("raw_url", STRING),
    # Read as text and converted per field: one malformed value rejects that field, not the document.
    ("matched_text_index", STRING),
    ("matched_sim", STRING),
    ("face_detections", STRING),
)
MMC4_SCHEMA = schema(
    ("url", STRING), ("text_list", STRINGS), ("image_info", T.ArrayType(_MMC4_IMAGE)), ("_corrupt", STRING)
)
OBELICS_SCHEMA = schema(
    ("images", STRINGS), ("texts", STRINGS), ("metadata", STRING), ("general_metadata", STRING), ("_corrupt", STRING)
)

# What each layout's reader keeps of the line a document came from (rejects quote it; ids follow its place).
LINE_COLUMNS = ("raw", "input_file", "block_start", "row_seq", "parse_reason")
TEXT_ITEM = T.StructType(
    [
        T.StructField("position", T.IntegerType()),
        T.StructField("text", T.StringType()),
        # The JSON type of the value in the input (STRING, DOUBLE, OBJECT...; null for parquet, typed already).
        T.StructField("json_type", T.StringType()),
    ]
)
IMAGE_ITEM = T.StructType(
    [
        T.StructField("position", T.IntegerType()),
        T.StructField("url", T.StringType()),
        T.StructField("alt_text", T.StringType()),
        T.StructField("matched_text_index", T.IntegerType()),
        T.StructField("matched_sim", T.DoubleType()),
        T.StructField("meta", T.StringType()),
        T.StructField("field_reason", T.StringType()),
        T.StructField("field_detail", T.StringType()),
    ]
)


# ---------------------------------------------------------------------------------------------------------
# Reading: one row per input record with its raw text and a parse failure reason (or null).


def _read_jsonl(reader: DataFrameReader, files: list[str], schema: T.StructType, texts_field: str) -> DataFrame:
    lines = reader.text(files).select(
        # A UTF-8 byte-order mark (first line of a file written by some editors) is not part of the JSON.
        F.regexp_replace("value", "^\ufeff", "").alias("raw"),
        F.is_valid_utf8("value").alias("valid_utf8"),  # before the replace, which would mend invalid bytes
        F.col("_metadata.file_path").alias("input_file"),
        # Where the line is: its split's first byte and its order in the task (the ingest stage keys rejects by it).
        F.col("_metadata.file_block_start").alias("block_start"),
        F.monotonically_increasing_id().alias("row_seq"),
    )
    lines = lines.filter(F.trim("raw") != "")
    # The JSON types of the texts (and of an MMC4 url), which from_json would read as strings (2.5 as "2.5").
    url = ", url: variant" if "url" in schema.names else ""
    types = F.from_json("raw", f"struct<{texts_field}: array<variant>{url}>", JSON_OPTIONS)
    parsed = lines.select(
        "*",
        F.from_json("raw", schema, {**JSON_OPTIONS, "columnNameOfCorruptRecord": "_corrupt"}).alias("rec"),
        F.transform(types[texts_field], F.schema_of_variant).alias("text_types"),
        (not_a_string(types["url"]) if url else F.lit(False)).alias("url_not_a_string"),
    )
    trimmed = F.trim("raw")
    is_object = trimmed.startswith("{")
    reason = first_reason(
        [
            (~F.col("valid_utf8"), "invalid_utf8"),
            (trimmed == "null", "null_document"),
            (
                ~F.when(is_object, one_json_value(F.col("raw"), "struct<>")).otherwise(
                    one_json_value(F.col("raw"), "variant")
                ),
                "malformed_json",
            ),
            (~is_object, "not_a_json_object"),
            (F.col("rec._corrupt").isNotNull() | F.col("url_not_a_string"), "schema_mismatch"),
        ]
    )
    return parsed.withColumn("parse_reason", reason)


def _read_parquet(reader: DataFrameReader, files: list[str], schema: T.StructType) -> DataFrame:
    file_schema = T.StructType([f for f in schema.fields if f.name != "_corrupt"])
    df = reader.schema(file_schema).parquet(*files)
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
        F.lit(0).cast("long").alias("block_start"),
        F.col("_metadata.row_index").alias("row_seq"),
        F.lit(None).cast("array<string>").alias("text_types"),
        rec.alias("rec"),
        F.when(~valid, F.lit("invalid_utf8")).alias("parse_reason"),
    )


# ---------------------------------------------------------------------------------------------------------
# Normalising both layouts to: url, meta, texts array<TEXT_ITEM>, images array<IMAGE_ITEM>, layout_reason.


@dataclass(frozen=True)
class Limits:
    """Items per document above which a document is rejected before any per-item work is done."""

    max_texts: int
    max_images: int


def _zipped_texts(texts: Column, n_texts: Column) -> Column:
    """``texts`` zipped with their JSON types (``text_types``), as many as there are texts.

    Each element's type comes zipped with it: a lambda that read ``text_types`` by index would let Spark inline
    the line's whole parse into the lambda and redo it per element (quadratic in the line's length).
    """
    types = F.coalesce(F.col("text_types"), F.array().cast("array<string>"))
    return F.slice(F.arrays_zip(texts.alias("text"), types.alias("json_type")), 1, n_texts)


def _normalise_mmc4(df: DataFrame, limits: Limits) -> DataFrame:
    text_list = F.coalesce(F.col("rec.text_list"), F.array().cast("array<string>"))
    image_info = F.coalesce(F.col("rec.image_info"), F.array().cast(T.ArrayType(_MMC4_IMAGE)))
    n_texts, n_images = F.size(text_list), F.size(image_info)
    within = (n_texts <= limits.max_texts) & (n_images <= limits.max_images)
    texts = F.transform(
        _zipped_texts(text_list, n_texts),
        lambda x, i: F.struct(
            i.cast("int").alias("position"), x["text"].alias("text"), x["json_type"].alias("json_type")
        ),
    )

    def image_item(x: Column, i: Column) -> Column:
        index, sim = x["matched_text_index"], x["matched_sim"]
        index_value = index.try_cast("int")
        sim_value = sim.try_cast("double")
        bad_index = index.isNotNull() & index_value.isNull()
        bad_sim = sim.isNotNull() & (sim_value.isNull() | F.isnan(sim_value) | (F.abs(sim_value) == float("inf")))
        field_reason = first_reason([(bad_index, "invalid_matched_text_index"), (bad_sim, "invalid_matched_sim")])
        return F.struct(
            i.cast("int").alias("position"),
            x["raw_url"].alias("url"),
            F.lit(None).cast("string").alias("alt_text"),
            F.when(~bad_index, index_value).alias("matched_text_index"),
            F.when(~bad_sim, sim_value).alias("matched_sim"),
            F.to_json(
                F.struct(x["image_name"].alias("image_name"), x["face_detections"].alias("face_detections"))
            ).alias("meta"),
            field_reason.alias("field_reason"),
            # from_json keeps a non-numeric number (NaN) as its quoted JSON text
            F.regexp_replace(F.when(bad_index, index).when(bad_sim, sim), '^"|"$', "").alias("field_detail"),
        )

    images = F.transform(image_info, image_item)
    return df.select(
        *LINE_COLUMNS,
        F.col("rec.url").alias("url"),
        F.lit(None).cast("string").alias("meta"),
        _unless(within, texts, TEXT_ITEM).alias("texts"),
        _unless(within, images, IMAGE_ITEM).alias("images"),
        n_texts.alias("n_texts"),
        n_images.alias("n_images"),
        F.lit(None).cast("string").alias("layout_reason"),
    )


def _unless(within: Column, items: Column, item: T.StructType) -> Column:
    """``items`` as an array of ``item`` when ``within`` the limits, else empty (the document is rejected)."""
    return F.when(within, items.cast(T.ArrayType(item))).otherwise(F.array().cast(T.ArrayType(item)))


def _normalise_obelics(df: DataFrame, limits: Limits) -> DataFrame:
    imgs = F.coalesce(F.col("rec.images"), F.array().cast("array<string>"))
    txts = F.coalesce(F.col("rec.texts"), F.array().cast("array<string>"))
    n_texts = F.size(F.filter(txts, lambda t: t.isNotNull()))
    n_images = F.size(F.filter(imgs, lambda t: t.isNotNull()))
    within = (n_texts <= limits.max_texts) & (n_images <= limits.max_images)
    meta = F.from_json(F.col("rec.metadata"), T.ArrayType(T.StringType()))
    meta_ok = meta.isNotNull() & (F.size(meta) == F.size(imgs))
    # Every per-position value is zipped in (see _zipped_texts): nothing inside a lambda parses the line again.
    metas = F.when(meta_ok, meta).otherwise(F.array().cast("array<string>"))
    types = F.coalesce(F.col("text_types"), F.array().cast("array<string>"))
    positions = F.greatest(F.size(imgs), F.size(txts))
    items = F.slice(
        F.arrays_zip(imgs.alias("image"), txts.alias("text"), types.alias("json_type"), metas.alias("meta")),
        1,
        positions,
    )
    indexed = F.transform(
        items,
        lambda x, i: F.struct(
            i.cast("int").alias("position"),
            x["image"].alias("image"),
            x["text"].alias("text"),
            x["json_type"].alias("json_type"),
            x["meta"].alias("meta"),
        ),
    )
    texts = F.transform(
        F.filter(indexed, lambda x: x["text"].isNotNull()),
        lambda x: F.struct(x["position"].alias("position"), x["text"].alias("text"), x["json_type"].alias("json_type")),
    )

    def image_item(x: Column) -> Column:
        return F.struct(
            x["position"].alias("position"),
            x["image"].alias("url"),
            F.get_json_object(x["meta"], "$.alt_text").alias("alt_text"),
            F.lit(None).cast("int").alias("matched_text_index"),
            F.lit(None).cast("double").alias("matched_sim"),
            x["meta"].alias("meta"),
            F.lit(None).cast("string").alias("field_reason"),
            F.lit(None).cast("string").alias("field_detail"),
        )

    images = F.transform(F.filter(indexed, lambda x: x["image"].isNotNull()), image_item)
    both = F.exists(indexed, lambda x: x["image"].isNotNull() & x["text"].isNotNull())
    neither = F.exists(indexed, lambda x: x["image"].isNull() & x["text"].isNull())
    url_json = F.from_json(F.col("rec.general_metadata"), "struct<url: variant>", JSON_OPTIONS)["url"]
    layout_reason = first_reason(
        [
            (not_a_string(url_json), "schema_mismatch"),
            (F.size(imgs) != F.size(txts), "unequal_list_lengths"),
            (both, "position_with_text_and_image"),
            (neither, "position_with_neither_text_nor_image"),
        ]
    )
    return df.select(
        *LINE_COLUMNS,
        F.get_json_object("rec.general_metadata", "$.url").alias("url"),
        F.col("rec.general_metadata").alias("meta"),
        _unless(within, texts, TEXT_ITEM).alias("texts"),
        _unless(within, images, IMAGE_ITEM).alias("images"),
        n_texts.alias("n_texts"),
        n_images.alias("n_images"),
        F.when(within, layout_reason).alias("layout_reason"),
    )


def read_documents(spark: SparkSession, inp: IngestInput, limits: Limits, files: list[str] | None = None) -> DataFrame:
    """One input dump (``files`` of it, default: all) as normalised documents (not yet validated), with source
    and layout columns; a document over ``limits`` keeps its counts but no texts or images."""
    schema = MMC4_SCHEMA if inp.layout == "mmc4" else OBELICS_SCHEMA
    texts_field = "text_list" if inp.layout == "mmc4" else "texts"
    parts = []
    for paths, options in path_groups(files) if files is not None else [([inp.path], {})]:
        reader = spark.read.options(**READ_OPTIONS, **options)
        if inp.format == "jsonl":
            parts.append(_read_jsonl(reader, paths, schema, texts_field))
        else:
            parts.append(_read_parquet(reader, paths, schema))
    df = functools.reduce(DataFrame.unionByName, parts)
    normalised = _normalise_mmc4(df, limits) if inp.layout == "mmc4" else _normalise_obelics(df, limits)
    return normalised.select(F.lit(inp.source).alias("source"), F.lit(inp.layout).alias("layout"), "*")
