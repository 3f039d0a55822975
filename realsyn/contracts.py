"""Every table realsyn writes, declared once: logical name, columns, key, partitioning, properties, meaning.

A stage refers to its tables by these declarations, and the lakehouse creates a table from its declaration and
checks every write against it (:meth:`Table.conform`): a frame that lacks a column, has one the contract does not
name or gives one another type is refused before anything is written, naming the table and the columns. Column
order and nullability are those of the tables realsyn has always written, so existing lakes need no migration.
``docs/tables.md`` lists the contracts (``python -m realsyn.contracts`` writes it).

A logical name such as ``bronze.documents`` lives at ``<root>/bronze/documents`` when storage is a folder or URI, or
at ``<catalog>.<schema>.bronze_documents`` when storage is a metastore schema (see :class:`realsyn.tables.Lakehouse`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from udfs.fetch_schema import ARROW_SCHEMA as FETCHED_IMAGES_ARROW_SCHEMA

# Every reject table names its reason column so, beside a nullable ``detail`` that says what was measured.
REASON = "reason"
DETAIL = "detail"

# The level of a centroid in silver.sentence_centroids / silver.image_centroids: the k-means tree's two levels.
LEVEL_COARSE = 0
LEVEL_LEAF = 1  # a leaf's centroid_id is the leaf_id of the clusters tables

# gold.dataset (and the release): text1..text3, the best retrieved texts by rank; and one boolean column per scale.
RETRIEVED_TEXTS = 3
SCALE_PREFIX = "scale_"

# Properties of every table realsyn creates: no deletion vectors, so delta-rs and DuckDB read them.
TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.autoOptimize.optimizeWrite": "true",
}

STRING = T.StringType()
INT = T.IntegerType()
LONG = T.LongType()
FLOAT = T.FloatType()
DOUBLE = T.DoubleType()
BOOLEAN = T.BooleanType()
BINARY = T.BinaryType()
TIMESTAMP = T.TimestampType()
STRINGS = T.ArrayType(STRING, True)
VECTOR = T.ArrayType(FLOAT, False)  # an embedding or a centroid: no null element


class ContractError(ValueError):
    """A frame written to a table does not have the table's columns."""


@dataclass(frozen=True)
class OpenColumns:
    """Columns whose names come from the config (``gold.dataset``'s ``scale_<name>``), all of one type, placed
    right after column ``after``."""

    prefix: str
    data_type: T.DataType
    after: str
    description: str


@dataclass(frozen=True, eq=False)
class Table:
    """The contract of one Delta table.

    ``keys``: the columns each row is unique on (the MERGE condition of incremental writes). ``properties``: added
    to :data:`TABLE_PROPERTIES` when the table is created. ``open_columns``: config-named columns besides ``schema``.
    Each table is declared once, so two contracts are equal only when they are the same object.
    """

    name: str
    schema: T.StructType
    keys: tuple[str, ...]
    description: str
    partition_by: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    open_columns: OpenColumns | None = None

    def __str__(self) -> str:
        return self.name

    @property
    def columns(self) -> list[str]:
        """The declared column names, in order."""
        return self.schema.fieldNames()

    def is_open(self, name: str, data_type: T.DataType) -> bool:
        """Whether ``name`` of ``data_type`` is one of the table's config-named columns."""
        spec = self.open_columns
        return spec is not None and name.startswith(spec.prefix) and same_type(data_type, spec.data_type)

    def conform(self, df: DataFrame) -> DataFrame:
        """``df`` with its columns in the table's order, once checked against the contract.

        Raises ContractError naming the table and every missing, unknown or mistyped column. Nullability is not
        compared here: Delta refuses a null in a column declared NOT NULL when the rows are written.
        """
        have = {f.name: f.dataType for f in df.schema.fields}
        missing = [c for c in self.columns if c not in have]
        unknown = [c for c in have if c not in self.columns and not self.is_open(c, have[c])]
        mistyped = [
            f"{f.name} is {have[f.name].simpleString()}, not {f.dataType.simpleString()}"
            for f in self.schema.fields
            if f.name in have and not same_type(have[f.name], f.dataType)
        ]
        problems = [
            *([f"missing {', '.join(missing)}"] if missing else []),
            *([f"not in the contract: {', '.join(unknown)}"] if unknown else []),
            *mistyped,
        ]
        if problems:
            raise ContractError(f"{self.name}: the rows to write do not match the table: {'; '.join(problems)}")
        order = list(self.columns)
        if self.open_columns is not None:
            extra = [c for c in have if c not in self.columns]
            at = order.index(self.open_columns.after) + 1
            order[at:at] = extra
        return df.select(*order) if list(have) != order else df


def scale_column(name: str) -> str:
    """The boolean membership column of scale ``name`` (``balance.scales``) in gold.dataset."""
    return f"{SCALE_PREFIX}{name}"


def same_type(a: T.DataType, b: T.DataType) -> bool:
    """Whether ``a`` and ``b`` are the same type, nullability of fields and elements aside."""
    return _loose(a) == _loose(b)


def _loose(t: T.DataType) -> T.DataType:
    if isinstance(t, T.ArrayType):
        return T.ArrayType(_loose(t.elementType), True)
    if isinstance(t, T.MapType):
        return T.MapType(_loose(t.keyType), _loose(t.valueType), True)
    if isinstance(t, T.StructType):
        return T.StructType([T.StructField(f.name, _loose(f.dataType), True) for f in t.fields])
    return t


def schema(*columns: tuple[str, T.DataType] | tuple[str, T.DataType, bool]) -> T.StructType:
    """A struct from ``(name, type)`` (nullable) and ``(name, type, False)`` (NOT NULL) pairs."""
    return T.StructType([T.StructField(c[0], c[1], c[2] if len(c) == 3 else True) for c in columns])


TABLES: dict[str, Table] = {}


def _table(
    name: str,
    columns: T.StructType,
    keys: tuple[str, ...],
    description: str,
    open_columns: OpenColumns | None = None,
    properties: Mapping[str, str] | None = None,
) -> Table:
    table = Table(name, columns, keys, description, properties=properties or {}, open_columns=open_columns)
    if table.name in TABLES:
        raise ValueError(f"table {table.name} is declared twice")
    missing = [k for k in (*table.keys, *table.partition_by) if k not in table.columns]
    if missing:
        raise ValueError(f"{table.name}: key or partition column not among its columns: {', '.join(missing)}")
    TABLES[table.name] = table
    return table


def _embedding_tables(kind: str, key: str) -> tuple[Table, Table]:
    block = "; created with the Parquet block size of embed.parquet_block_size_mb (table property parquet.block.size)"
    embeddings = _table(
        f"silver.{kind}_embeddings",
        schema((key, STRING, False), ("model_id", STRING, False), ("embedding", VECTOR, False)),
        (key, "model_id"),
        f"the L2-normalised vector of every {kind} of silver.{kind}s, per model{block}",
    )
    rejects = _table(
        f"silver.{kind}_embedding_rejects",
        schema((key, STRING, False), ("model_id", STRING, False), (REASON, STRING, False), (DETAIL, STRING)),
        (key, "model_id"),
        f"{kind}s the model could not embed (undecodable input, empty text, a vector that is not finite){block}",
    )
    return embeddings, rejects


def _cluster_tables(kind: str, key: str) -> tuple[Table, Table, Table]:
    centroids = _table(
        f"silver.{kind}_centroids",
        schema(
            ("model_id", STRING, False),
            ("level", INT, False),
            ("centroid_id", LONG, False),
            ("parent_id", LONG),
            ("vector", VECTOR, False),
            ("size", LONG, False),
        ),
        ("model_id", "level", "centroid_id"),
        f"the two-level k-means tree of the {kind} embeddings: level {LEVEL_COARSE} coarse, level {LEVEL_LEAF} leaves "
        "(parent_id: their coarse centroid), with the number of rows assigned to each",
    )
    clusters = _table(
        f"silver.{kind}_clusters",
        schema((key, STRING, False), ("model_id", STRING, False), ("leaf_id", LONG, False)),
        (key, "model_id"),
        f"the leaf of every {kind}",
    )
    rejects = _table(
        f"silver.{kind}_cluster_rejects",
        schema((key, STRING), ("model_id", STRING, False), (REASON, STRING, False), (DETAIL, STRING, False)),
        (key, "model_id"),
        f"{kind} embeddings clustering cannot use (null, wrong length, NaN / infinite, zero)",
    )
    return centroids, clusters, rejects


# Bronze: as ingested.
BRONZE_DOCUMENTS = _table(
    "bronze.documents",
    schema(
        ("doc_id", STRING),
        ("source", STRING, False),
        ("layout", STRING, False),
        ("url", STRING),
        ("input_file", STRING, False),
        ("n_texts", INT, False),
        ("n_images", INT, False),
        ("meta", STRING),
    ),
    ("doc_id",),
    "one row per ingested document: source, layout (obelics / mmc4), URL, input file, counts, other fields as JSON",
)
BRONZE_TEXTS = _table(
    "bronze.texts",
    schema(("doc_id", STRING), ("position", INT), ("text", STRING)),
    ("doc_id", "position"),
    "every text of a document at its position in reading order",
)
BRONZE_IMAGE_REFS = _table(
    "bronze.image_refs",
    schema(
        ("doc_id", STRING),
        ("position", INT),
        ("url", STRING),
        ("url_id", STRING),
        ("alt_text", STRING),
        ("matched_text_index", INT),
        ("matched_sim", DOUBLE),
        ("meta", STRING),
    ),
    ("doc_id", "position"),
    "every image reference: URL, url_id, alt text, MMC4 matched_text_index / matched_sim",
)
BRONZE_INGEST_REJECTS = _table(
    "bronze.ingest_rejects",
    schema(
        ("reject_id", STRING),
        ("source", STRING),
        ("input_file", STRING),
        ("kind", STRING, False),
        ("doc_id", STRING),
        ("position", INT),
        (REASON, STRING),
        ("raw", STRING),
        (DETAIL, STRING),
    ),
    ("reject_id",),
    "unusable input, one reason per row (malformed_json, invalid_utf8, duplicate_document, ...)",
)
# One row per distinct image URL with its final fetch status and, when ok, the image bytes (or a file path): the
# fetcher's Arrow batches as they are, so its schema is theirs. Optimized writes would shuffle every image's bytes
# once more before writing; each task already writes one large file per commit batch.
BRONZE_FETCHED_IMAGES = _table(
    "bronze.fetched_images",
    from_arrow_schema(FETCHED_IMAGES_ARROW_SCHEMA),
    ("url_id",),
    "one row per distinct URL: final status, HTTP status, attempts, bytes (or a file path), size, format, and the "
    "perceptual hash (`udfs.images.phash`) that extract_images groups near-duplicates by",
    properties={"delta.autoOptimize.optimizeWrite": "false"},
)

# Silver: images and sentences after filters and dedup, and what the filters and dedup dropped.
# silver.images holds the bytes too: its writing tasks read them where bronze.fetched_images stores them, one file
# each, so an optimized write would only shuffle them once more (840 MB of shuffle for 14,593 images at 10k
# documents, docs/benchmarks.md).
SILVER_IMAGES = _table(
    "silver.images",
    schema(
        ("image_id", STRING),
        ("content", BINARY),
        ("width", INT),
        ("height", INT),
        ("format", STRING),
        ("url_ids", STRINGS),
        ("doc_ids", STRINGS),
    ),
    ("image_id",),
    "kept images with all their URLs and documents",
    properties={"delta.autoOptimize.optimizeWrite": "false"},
)
SILVER_IMAGE_REJECTS = _table(
    "silver.image_rejects",
    schema(
        ("reject_id", STRING),
        ("step", STRING),
        (REASON, STRING),
        (DETAIL, STRING),
        ("image_id", STRING),
        ("url_ids", STRINGS),
        ("doc_ids", STRINGS),
        ("width", INT),
        ("height", INT),
        ("format", STRING),
        ("duplicate_of", STRING),
    ),
    ("reject_id",),
    "URLs (quality, exact dedup; reject_id = url_id) and images (later steps; reject_id = image_id) dropped: the "
    "step, one reason, the kept duplicate",
)
SILVER_SENTENCES = _table(
    "silver.sentences",
    schema(("sentence_id", STRING), ("text", STRING), ("doc_ids", STRINGS), ("n_occurrences", LONG)),
    ("sentence_id",),
    "kept distinct sentences with the documents they occur in and how often",
)
SILVER_SENTENCE_REJECTS = _table(
    "silver.sentence_rejects",
    schema(
        *((f.name, f.dataType) for f in SILVER_SENTENCES.schema.fields),
        ("step", STRING),
        (REASON, STRING),
        (DETAIL, STRING),
        ("duplicate_of", STRING),
    ),
    ("sentence_id",),
    "sentences a filter or a dedup step dropped: the step, one reason, the kept duplicate",
)
SILVER_SENTENCE_PHRASES = _table(
    "silver.sentence_phrases",
    schema(("sentence_id", STRING), ("parser", STRING), ("phrases", STRINGS)),
    ("sentence_id",),
    "nouns and noun phrases of each kept sentence, read off the CAT filter's parse by `parser`: the tagger's "
    "vocabulary counts them instead of parsing the sentences again",
)

# Silver: embeddings (key: id + model_id) and what could not be embedded.
SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGE_EMBEDDING_REJECTS = _embedding_tables("image", "image_id")
SILVER_SENTENCE_EMBEDDINGS, SILVER_SENTENCE_EMBEDDING_REJECTS = _embedding_tables("sentence", "sentence_id")

# Silver: k-means trees of sentences and images, the leaf of every sentence / image, top-k sentences per image.
SILVER_SENTENCE_CENTROIDS, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCE_CLUSTER_REJECTS = _cluster_tables(
    "sentence", "sentence_id"
)
SILVER_IMAGE_CENTROIDS, SILVER_IMAGE_CLUSTERS, SILVER_IMAGE_CLUSTER_REJECTS = _cluster_tables("image", "image_id")
SILVER_RETRIEVAL = _table(
    "silver.retrieval",
    schema(
        ("image_id", STRING, False),
        ("model_id", STRING, False),
        ("rank", INT, False),
        ("sentence_id", STRING, False),
        ("score", FLOAT, False),
        ("leaf_id", LONG, False),
    ),
    ("image_id", "model_id", "rank"),
    "the top-k sentences of each image (rank 1 best), with their cosine and the sentence's leaf",
)
SILVER_RETRIEVAL_REJECTS = _table(
    "silver.retrieval_rejects",
    schema(("image_id", STRING), ("model_id", STRING, False), (REASON, STRING, False), (DETAIL, STRING, False)),
    ("image_id", "model_id"),
    "images whose vectors retrieval cannot use",
)

# Silver: the tag vocabulary (base list + tags mined from the sentences), each tag embedded by the CLIP text tower.
SILVER_TAGS = _table(
    "silver.tags",
    schema(
        ("tag", STRING, False),
        ("model_id", STRING, False),
        ("source", STRING, False),
        ("frequency", LONG, False),
        ("prompt", STRING, False),
        ("embedding", VECTOR, False),
    ),
    ("tag", "model_id"),
    "the tagger's vocabulary (RAM base list + nouns / noun phrases mined from silver.sentences): source, document "
    "frequency, the prompt embedded and its CLIP text embedding",
)

# Gold: what the vision models and the LLM wrote per image.
_SYNTHETIC_KEY = (
    ("image_id", STRING, False),
    ("model_id", STRING, False),
    ("captioner_id", STRING, False),
    ("llm_id", STRING, False),
    ("prompt_version", STRING, False),
)
GOLD_CAPTIONS = _table(
    "gold.captions",
    schema(
        ("image_id", STRING, False),
        ("captioner_id", STRING, False),
        ("caption", STRING),
        (REASON, STRING),
        (DETAIL, STRING),
    ),
    ("image_id", "captioner_id"),
    "one caption per image and captioner, or the reason there is none",
)
GOLD_IMAGE_TAGS = _table(
    "gold.image_tags",
    schema(
        ("image_id", STRING, False),
        ("model_id", STRING, False),
        ("tags", STRINGS, False),
        ("cosines", T.ArrayType(FLOAT, True), False),
    ),
    ("image_id", "model_id"),
    "each image's top tags (best first) with their cosines",
)
GOLD_SYNTHETIC_TEXTS = _table(
    "gold.synthetic_texts",
    schema(
        *_SYNTHETIC_KEY,
        ("retrieved_sentence_id", STRING, False),
        ("retrieved_text", STRING, False),
        ("caption", STRING, False),
        ("tags", STRINGS, False),
        ("syn_text", STRING, False),
        ("cosine", FLOAT, False),
    ),
    tuple(c[0] for c in _SYNTHETIC_KEY),
    "kept synthetic texts with the retrieved text, caption and tags they were written from, and their image cosine",
)
GOLD_SYNTHETIC_TEXT_REJECTS = _table(
    "gold.synthetic_text_rejects",
    schema(*_SYNTHETIC_KEY, (REASON, STRING, False), (DETAIL, STRING)),
    tuple(c[0] for c in _SYNTHETIC_KEY),
    "images without a kept synthetic text under the key, one reason each",
)

# Gold: the dataset, one row per image with its three retrieved texts, its synthetic text, its clusters and the
# scales it belongs to; and the images of silver.images that are absent from it, with the reason.
GOLD_DATASET = _table(
    "gold.dataset",
    schema(
        ("image_id", STRING),
        ("raw_image_url", STRING),
        ("url_redacted", BOOLEAN),
        ("text1", STRING),
        ("text2", STRING),
        ("text3", STRING),
        ("syn_text", STRING),
        ("coarse_id", LONG),
        ("leaf_id", LONG),
        ("cluster_rank", INT),
        ("syn_cosine", FLOAT),
        ("retrieved_sentence_ids", STRINGS),
        ("retrieval_scores", T.ArrayType(FLOAT, True)),
        ("doc_ids", STRINGS),
        (
            "source_refs",
            T.ArrayType(schema(("doc_id", STRING), ("position", INT), ("url", STRING)), True),
        ),
        ("width", INT),
        ("height", INT),
        ("format", STRING),
        ("model_id", STRING),
        ("captioner_id", STRING),
        ("llm_id", STRING),
        ("prompt_version", STRING),
    ),
    ("image_id",),
    "one row per kept pair: raw_image_url, text1..text3 (by rank), syn_text, coarse_id, leaf_id, cluster_rank, "
    "lineage (doc_ids, source_refs, model / captioner / LLM ids, prompt version)",
    OpenColumns(SCALE_PREFIX, BOOLEAN, "cluster_rank", "one per scale of balance.scales: in that scale"),
)
GOLD_DATASET_REJECTS = _table(
    "gold.dataset_rejects",
    schema(
        ("image_id", STRING),
        (REASON, STRING),
        (DETAIL, STRING),
        ("model_id", STRING),
        ("captioner_id", STRING),
        ("llm_id", STRING),
        ("prompt_version", STRING),
        ("doc_ids", STRINGS),
    ),
    ("image_id",),
    "images of silver.images absent from gold.dataset, one reason each (synthetic_text_rejected, "
    "no_synthetic_text, no_retrieved_text, no_cluster)",
)

GOLD_CONCEPT_COUNTS = _table(
    "gold.concept_counts",
    schema(
        ("scale", STRING, False),
        ("by", STRING, False),
        ("concept", STRING, False),
        ("rank", INT, False),
        ("count_before", LONG, False),
        ("count_after", LONG, False),
    ),
    ("scale", "concept"),
    "per concept of every entries / concepts scale: its rank by pairs in gold.dataset (1 = most), those pairs "
    "(count_before) and those in the scale (count_after)",
)

# Gold: per-stage row counts (rows in, kept, rejected) for the whole pipeline, and the runs.
# What tells the funnels of one stage apart: a stage that runs models keeps one funnel per model (and prompt).
FUNNEL_IDENTITY = ("stage", "model_id", "captioner", "llm", "prompt_version")
FUNNEL = _table(
    "gold.funnel",
    schema(
        ("stage", STRING, False),
        ("model_id", STRING),
        ("captioner", STRING),
        ("llm", STRING),
        ("prompt_version", STRING),
        ("step_index", INT, False),
        ("step", STRING, False),
        ("rows_in", LONG, False),
        ("rows_out", LONG, False),
        ("rows_rejected", LONG, False),
    ),
    (*FUNNEL_IDENTITY, "step_index"),
    "rows in, kept and rejected per step of every stage (rows kept by a step are the rows that enter the next); "
    "model_id, captioner, llm and prompt_version name what a stage that runs models used (null elsewhere)",
)
RUNS = _table(
    "gold.runs",
    schema(
        ("run_id", STRING, False),
        ("stage", STRING, False),
        ("stage_index", INT, False),
        ("status", STRING, False),
        ("started_at", TIMESTAMP, False),
        ("ended_at", TIMESTAMP, False),
        ("seconds", DOUBLE, False),
        ("rows_in", T.MapType(STRING, LONG, True), False),
        ("rows_out", T.MapType(STRING, LONG, True), False),
        ("table_versions", T.MapType(STRING, LONG, False)),
        ("task_busy_share", DOUBLE),
        ("config_hash", STRING, False),
        ("code_version", STRING, False),
        (DETAIL, STRING),
    ),
    ("run_id", "stage"),
    "one row per stage of every pipeline run: status (ok, skipped, failed), times, rows per table read and "
    "written, the Delta version of each after it, its Spark task time over wall time x task slots, config hash, "
    "code version",
)


def markdown() -> str:
    """docs/tables.md: every contract with its key, meaning and columns."""
    out = [
        "# Tables",
        "",
        "Every table realsyn writes, as declared in `realsyn/contracts.py` (this page is written by",
        "`python -m realsyn.contracts docs/tables.md`; a test checks that it is current). Writes are checked against",
        "these columns; NOT NULL columns refuse nulls. Every reject table names its reason column `reason`, beside",
        "a `detail` that says what was measured.",
    ]
    for table in TABLES.values():
        out += ["", f"## `{table.name}`", "", f"{table.description[0].upper()}{table.description[1:]}.", ""]
        out.append(f"Key: {', '.join(f'`{k}`' for k in table.keys)}.")
        for key, value in table.properties.items():
            out.append(f"Property `{key}`: {value}.")
        out += ["", "| column | type | null |", "|---|---|---|"]
        for f in table.schema.fields:
            out.append(f"| `{f.name}` | `{f.dataType.simpleString()}` | {'yes' if f.nullable else 'NOT NULL'} |")
            if table.open_columns is not None and f.name == table.open_columns.after:
                spec = table.open_columns
                out.append(f"| `{spec.prefix}<name>` | `{spec.data_type.simpleString()}` | {spec.description} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(markdown())
    else:
        print(markdown(), end="")
