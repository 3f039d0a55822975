"""Bronze ingest: OBELICS and MMC4 dumps -> documents, texts and image references, with every bad input rejected.

Both layouts are first normalised to one document shape (source, url, texts with positions, images with
positions); validation then works on that shape, so each check is written once.

Positions: in OBELICS a position is the index in the interleaved ``texts`` / ``images`` lists. In MMC4 texts and
images are separate lists, so a text's position is its index in ``text_list`` and an image's position is its
index in ``image_info``; ``matched_text_index`` links an MMC4 image to its text.

Unreadable files: an input file that Spark cannot read (a truncated ``.jsonl.gz``, a non-parquet file in a parquet
folder, a shard whose columns have other types) becomes one reject row of kind ``file`` (reason
``unreadable_file``, the error in ``detail``), and the other files of the input are ingested. Once the file is
fixed (or replaced), the next ingest run reads it and removes its ``file`` reject row.

Retry safety: texts and image references are MERGEd on (doc_id, position) before the documents themselves, so
the documents table marks what is complete. A document already in bronze is skipped, which also makes
re-ingesting a dump (or ingesting an overlapping one) add nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from realsyn.config import Config, ConfigError, IngestConfig, IngestInput
from realsyn.contracts import BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS, BRONZE_TEXTS
from realsyn.funnel import FunnelStep, first_reason, write_funnel
from realsyn.ids import stable_id_col
from realsyn.tables import Lakehouse

log = logging.getLogger(__name__)

_MMC4_IMAGE = T.StructType(
    [
        T.StructField("image_name", T.StringType()),
        T.StructField("raw_url", T.StringType()),
        # Read as text and converted per field: one malformed value rejects that field, not the document.
        T.StructField("matched_text_index", T.StringType()),
        T.StructField("matched_sim", T.StringType()),
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
# Reading: one row per input record with its raw text and a parse failure reason (or null).


# Strict JSON, as Python's json module reads it (Spark allows single quotes by default), and strings of any length:
# Jackson stops at 20,000,000 characters, which a data: URI image can pass. NaN / Infinity (written by Python's json
# module, found in MMC4's matched_sim) are read.
_JSON_OPTIONS = {"allowSingleQuotes": "false", "maxStringLen": str(2**31 - 1)}


# Local files are read without Hadoop's checksum layer: it names a file's checksum ".<name>.crc", which is not a
# valid path when the name holds ":" (read as a URI scheme), and input dumps have no checksum files anyway.
_READ_OPTIONS = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem", "fs.file.impl.disable.cache": "true"}


def _one_json_value(raw: Column, value_type: str) -> Column:
    """Whether ``raw`` is one strict JSON value of ``value_type`` with nothing after it.

    Spark's JSON parsers stop after the first value and ignore what follows. Wrapped in ``[...]``, content after
    the value fails to parse unless it starts with "]" (more values, after ",", make the array longer);
    wrapped in ``{"k": ...}``, it fails unless it starts with "}" or ",". Only a line with nothing after its value
    passes both. A value of type ``struct<>`` is checked without being built (its strings are skipped).
    """
    in_array = F.from_json(F.concat(F.lit("["), raw, F.lit("]")), f"array<{value_type}>", _JSON_OPTIONS)
    in_object = F.from_json(
        F.concat(F.lit('{"k":'), raw, F.lit("}")),
        f"struct<k: {value_type}, _corrupt: string>",
        {**_JSON_OPTIONS, "columnNameOfCorruptRecord": "_corrupt"},
    )
    return F.coalesce((F.size(in_array) == 1) & in_object["_corrupt"].isNull(), F.lit(False))


def _read_jsonl(reader: DataFrameReader, files: list[str], schema: T.StructType, texts_field: str) -> DataFrame:
    lines = reader.text(files).select(
        # A UTF-8 byte-order mark (first line of a file written by some editors) is not part of the JSON.
        F.regexp_replace("value", "^\ufeff", "").alias("raw"),
        F.is_valid_utf8("value").alias("valid_utf8"),  # before the replace, which would mend invalid bytes
        F.col("_metadata.file_path").alias("input_file"),
        # Where the line is: its split's first byte and its order in the task; see _line_keys.
        F.col("_metadata.file_block_start").alias("block_start"),
        F.monotonically_increasing_id().alias("row_seq"),
    )
    lines = lines.filter(F.trim("raw") != "")
    # The JSON types of the texts (and of an MMC4 url), which from_json would read as strings (2.5 as "2.5").
    url = ", url: variant" if "url" in schema.names else ""
    types = F.from_json("raw", f"struct<{texts_field}: array<variant>{url}>", _JSON_OPTIONS)
    parsed = lines.select(
        "*",
        F.from_json("raw", schema, {**_JSON_OPTIONS, "columnNameOfCorruptRecord": "_corrupt"}).alias("rec"),
        F.transform(types[texts_field], F.schema_of_variant).alias("text_types"),
        (_not_a_string(types["url"]) if url else F.lit(False)).alias("url_not_a_string"),
    )
    trimmed = F.trim("raw")
    is_object = trimmed.startswith("{")
    reason = first_reason(
        [
            (~F.col("valid_utf8"), "invalid_utf8"),
            (trimmed == "null", "null_document"),
            (
                ~F.when(is_object, _one_json_value(F.col("raw"), "struct<>")).otherwise(
                    _one_json_value(F.col("raw"), "variant")
                ),
                "malformed_json",
            ),
            (~is_object, "not_a_json_object"),
            (F.col("rec._corrupt").isNotNull() | F.col("url_not_a_string"), "schema_mismatch"),
        ]
    )
    return parsed.withColumn("parse_reason", reason)


def _not_a_string(value: Column) -> Column:
    """Whether a variant holds something other than a JSON string or null (an object as a URL)."""
    return ~F.coalesce(F.schema_of_variant(value).isin("STRING", "VOID"), F.lit(True))


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
        "raw",
        "input_file",
        "block_start",
        "row_seq",
        "parse_reason",
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
    url_json = F.from_json(F.col("rec.general_metadata"), "struct<url: variant>", _JSON_OPTIONS)["url"]
    layout_reason = first_reason(
        [
            (_not_a_string(url_json), "schema_mismatch"),
            (F.size(imgs) != F.size(txts), "unequal_list_lengths"),
            (both, "position_with_text_and_image"),
            (neither, "position_with_neither_text_nor_image"),
        ]
    )
    return df.select(
        "raw",
        "input_file",
        "block_start",
        "row_seq",
        "parse_reason",
        F.get_json_object("rec.general_metadata", "$.url").alias("url"),
        F.col("rec.general_metadata").alias("meta"),
        _unless(within, texts, TEXT_ITEM).alias("texts"),
        _unless(within, images, IMAGE_ITEM).alias("images"),
        n_texts.alias("n_texts"),
        n_images.alias("n_images"),
        F.when(within, layout_reason).alias("layout_reason"),
    )


_GLOB_CHARACTERS = re.compile(r"[{}\[\]*?\\]")


def _path_groups(files: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """``files`` as groups of paths that Spark reads each file of once, with the reader options of each group.

    Spark reads a path holding any of ``{}[]*?\\`` as a glob pattern: a name with ``{}`` or ``[]`` would match no
    file (or another one), one with ``*`` or ``?`` other files too. Those characters are escaped. Hadoop's glob
    cannot give back a name that also holds ":" (it parses the name as a URI), so such a file is read alone with
    globbing off (Spark's ``__globPaths__``, right for one path only: with several it repeats them).
    """
    together: list[str] = []
    alone: list[tuple[list[str], dict[str, str]]] = []
    for path in files:
        scheme, colon, rest = path.partition(":")
        if not _GLOB_CHARACTERS.search(rest):
            together.append(path)
        elif ":" in rest:
            alone.append(([path], {"__globPaths__": "false"}))
        else:
            together.append(scheme + colon + _GLOB_CHARACTERS.sub(r"\\\g<0>", rest))
    return ([(together, {})] if together else []) + alone


def read_documents(spark: SparkSession, inp: IngestInput, limits: Limits, files: list[str] | None = None) -> DataFrame:
    """One input dump (``files`` of it, default: all) as normalised documents (not yet validated), with source
    and layout columns; a document over ``limits`` keeps its counts but no texts or images."""
    schema = MMC4_SCHEMA if inp.layout == "mmc4" else OBELICS_SCHEMA
    texts_field = "text_list" if inp.layout == "mmc4" else "texts"
    parts = []
    for paths, options in _path_groups(files) if files is not None else [([inp.path], {})]:
        reader = spark.read.options(**_READ_OPTIONS, **options)
        if inp.format == "jsonl":
            parts.append(_read_jsonl(reader, paths, schema, texts_field))
        else:
            parts.append(_read_parquet(reader, paths, schema))
    df = functools.reduce(DataFrame.unionByName, parts)
    normalised = _normalise_mmc4(df, limits) if inp.layout == "mmc4" else _normalise_obelics(df, limits)
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


def _input_files(spark: SparkSession, cfg: IngestConfig) -> list[list[str]]:
    """The data files of every input (folders listed recursively, hidden and ``_`` files skipped); fail before
    any work when an input path does not exist."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    listed: list[list[str]] = []
    for i, inp in enumerate(cfg.inputs):
        path = jvm.org.apache.hadoop.fs.Path(inp.path)
        fs = path.getFileSystem(hadoop_conf)
        matches = fs.globStatus(path)
        if matches is None or len(matches) == 0:
            raise ConfigError(f"ingest.inputs[{i}].path: no such file or folder: {inp.path}")
        files: list[str] = []
        for status in matches:
            folder = str(status.getPath().toString())
            if status.isFile():
                files.append(folder)
            elif status.getPath().toUri().getScheme() == "file":
                files.extend(f"{folder}/{name}" for name in _local_files(str(status.getPath().toUri().getPath())))
            else:
                found = fs.listFiles(status.getPath(), True)
                while found.hasNext():
                    child = str(found.next().getPath().toString())
                    if not any(part.startswith((".", "_")) for part in child[len(folder) :].split("/") if part):
                        files.append(child)
        listed.append(sorted(set(files)))
    return listed


def _local_files(root: str) -> list[str]:
    """The files under local folder ``root`` (hidden and ``_`` ones skipped), relative to it. Links are followed,
    but not into a folder already listed or one holding ``root``: a link such as ``loop -> ..`` would list the
    input again, once per level (and two of them without end)."""
    top = Path(root).resolve()
    seen = {top}
    files: list[str] = []

    def fail(error: OSError) -> None:
        raise error

    for folder, dirs, names in os.walk(root, onerror=fail, followlinks=True):
        relative = Path(folder).relative_to(root)
        files += [(relative / n).as_posix() for n in names if not n.startswith((".", "_"))]
        kept = []
        for d in sorted(dirs):
            real = (Path(folder) / d).resolve()
            if not d.startswith((".", "_")) and real not in seen and real not in top.parents:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
    return files


def _failed_file(error: Exception, files: list[str]) -> str | None:
    """The input file an error of a Spark read names (the longest match), or None. Spark may name a file by its URI
    (``file:///a%20b.jsonl`` for ``file:/a b.jsonl``), so the error is searched with percent-escapes decoded too."""
    texts = (str(error), urllib.parse.unquote(str(error)))
    named = [f for f in files if any(f.split(":", 1)[-1] in text for text in texts)]
    return max(named, key=len) if named else None


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
    listed = _input_files(spark, icfg)
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
            path = _failed_file(e, [f for _, f in candidates])
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
