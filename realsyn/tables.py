"""Table names and the lakehouse that reads and writes them as Delta tables.

A logical name such as ``bronze.documents`` lives at ``<root>/bronze/documents`` when storage is a folder or
URI, or at ``<catalog>.<schema>.bronze_documents`` when storage is a metastore schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from realsyn.config import ConfigError, StorageConfig

# Bronze: as ingested.
BRONZE_DOCUMENTS = "bronze.documents"
BRONZE_TEXTS = "bronze.texts"
BRONZE_IMAGE_REFS = "bronze.image_refs"
BRONZE_INGEST_REJECTS = "bronze.ingest_rejects"
# Bronze: one row per distinct image URL with its final fetch status and, when ok, the image bytes.
BRONZE_FETCHED_IMAGES = "bronze.fetched_images"

# Silver: embeddings (key: id + model_id).
SILVER_SENTENCE_EMBEDDINGS = "silver.sentence_embeddings"
SILVER_IMAGE_EMBEDDINGS = "silver.image_embeddings"
# Silver: inputs the embed stage could not embed (undecodable image bytes, empty text), one reason each.
SILVER_IMAGE_EMBEDDING_REJECTS = "silver.image_embedding_rejects"
SILVER_SENTENCE_EMBEDDING_REJECTS = "silver.sentence_embedding_rejects"
# Silver: k-means trees of sentences and images, the leaf of every sentence / image, top-k sentences per image.
SILVER_SENTENCE_CENTROIDS = "silver.sentence_centroids"
SILVER_SENTENCE_CLUSTERS = "silver.sentence_clusters"
SILVER_IMAGE_CENTROIDS = "silver.image_centroids"
SILVER_IMAGE_CLUSTERS = "silver.image_clusters"
SILVER_RETRIEVAL = "silver.retrieval"
# Silver: embeddings clustering or retrieval cannot use (null, wrong length, NaN / infinite, zero), one reason each.
SILVER_SENTENCE_CLUSTER_REJECTS = "silver.sentence_cluster_rejects"
SILVER_IMAGE_CLUSTER_REJECTS = "silver.image_cluster_rejects"
SILVER_RETRIEVAL_REJECTS = "silver.retrieval_rejects"

# Silver: sentences after split, filters and dedup (key sentence_id), and what the filters/dedup dropped.
SILVER_SENTENCES = "silver.sentences"
SILVER_IMAGES = "silver.images"
SILVER_IMAGE_REJECTS = "silver.image_rejects"
SILVER_SENTENCE_REJECTS = "silver.sentence_rejects"

# Silver: the tag vocabulary (base list + tags mined from the sentences), each tag embedded by the CLIP text tower.
SILVER_TAGS = "silver.tags"

# Gold: what the vision models and the LLM wrote per image. Captions (key image_id, captioner_id); the top tags of
# each image (key image_id, model_id); synthetic texts that passed the image / text similarity filter (key image_id,
# model_id, captioner_id, llm_id, prompt_version) and, with one reason each, those that did not or could not be made.
GOLD_CAPTIONS = "gold.captions"
GOLD_IMAGE_TAGS = "gold.image_tags"
GOLD_SYNTHETIC_TEXTS = "gold.synthetic_texts"
GOLD_SYNTHETIC_TEXT_REJECTS = "gold.synthetic_text_rejects"
# Gold: the dataset, one row per image with its three retrieved texts, its synthetic text, its clusters and the
# scales it belongs to; and the images of silver.images that are absent from it, with the reason.
GOLD_DATASET = "gold.dataset"
GOLD_DATASET_REJECTS = "gold.dataset_rejects"

# Gold: per-stage row counts (rows in, kept, rejected) for the whole pipeline.
FUNNEL = "gold.funnel"
# Gold: one row per stage of every pipeline run (status, times, rows per table, config hash, code version).
RUNS = "gold.runs"

# Properties of every table realsyn creates: no deletion vectors, so delta-rs and DuckDB read them.
TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.autoOptimize.optimizeWrite": "true",
}

# Columns renamed since realsyn first wrote them, (old, new): every reject table names its reason column
# ``reason`` beside a ``detail``. A table that still has an old name is rewritten once, in one commit, the first time
# a stage writes to it (see Lakehouse.create_if_absent).
RENAMED_COLUMNS = (("reject_reason", "reason"),)

# A file of a committed table version in _delta_log: a commit (NNN.json) or a checkpoint (NNN.checkpoint[...].parquet).
_COMMITTED = re.compile(r"[0-9]{20}\.(json|checkpoint\..*parquet|checkpoint\.parquet)")


def clear_uncommitted_log(spark: SparkSession, location: str) -> bool:
    """Remove ``location``'s ``_delta_log`` when it holds no committed version; whether there was one to remove.

    A process killed inside a table's first commit leaves the log folder with at most a temporary file in it:
    no version exists, yet Delta's table builder takes the folder for a table and then fails to read it, so
    every rerun would fail. Such a log names no data, so removing it loses nothing.
    """
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    log = jvm.org.apache.hadoop.fs.Path(f"{location.rstrip('/')}/_delta_log")
    fs = log.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(log):
        return False
    if any(_COMMITTED.fullmatch(status.getPath().getName()) for status in fs.listStatus(log)):
        return False
    return bool(fs.delete(log, True))


def create_table_at(
    spark: SparkSession,
    location: str,
    schema: StructType,
    partition_by: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
) -> None:
    """Create an empty Delta table at the path ``location`` unless one exists there, with realsyn's table
    properties and ``properties``; a log left by a killed first commit is cleared first."""
    clear_uncommitted_log(spark, location)
    builder = DeltaTable.createIfNotExists(spark).addColumns(schema).location(location)
    for key, value in {**TABLE_PROPERTIES, **(properties or {})}.items():
        builder = builder.property(key, value)
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    builder.execute()


class Lakehouse:
    """Reads, creates and writes realsyn's Delta tables in one storage location."""

    def __init__(self, spark: SparkSession, storage: StorageConfig) -> None:
        self.spark = spark
        self.storage = storage
        self._present: set[str] = set()  # tables this instance created or found: later writes skip the check
        self._schema_ready = storage.catalog is None  # catalog mode: the schema is checked before the first write

    def location(self, name: str) -> str:
        """Path or fully qualified table name of logical table ``name``."""
        layer, _, table = name.partition(".")
        if self.storage.catalog is not None:
            return f"{self.storage.catalog}.{layer}_{table}"
        assert self.storage.root is not None
        root = self.storage.root.rstrip("/")
        if "://" not in root and not root.startswith("dbfs:"):
            root = str(Path(root).resolve())  # Delta's table builder takes no relative paths
        return f"{root}/{layer}/{table}"

    @property
    def _by_path(self) -> bool:
        return self.storage.catalog is None

    def ensure_schema(self) -> None:
        """In catalog mode, create the schema of ``storage.catalog`` unless it exists (no-op for path storage).

        Raises ConfigError naming ``storage.catalog`` when the catalog is not configured in this session or the
        schema cannot be created (no privilege, read-only metastore).
        """
        if self._schema_ready:
            return
        assert self.storage.catalog is not None
        catalog, schema = self.storage.catalog.split(".")
        try:
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS `{catalog}`.`{schema}`")
        except Exception as e:  # AnalysisException (unknown catalog), Py4J errors of the metastore client
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"storage.catalog: cannot use schema {schema!r} of catalog {catalog!r} "
                f"({self.storage.catalog!r}): {first}"
            ) from e
        self._schema_ready = True

    def exists(self, name: str) -> bool:
        """Whether the Delta table ``name`` exists."""
        loc = self.location(name)
        if self._by_path:
            return DeltaTable.isDeltaTable(self.spark, loc)
        return self.spark.catalog.tableExists(loc)

    def delta(self, name: str) -> DeltaTable:
        """The DeltaTable handle of ``name``."""
        loc = self.location(name)
        if self._by_path:
            return DeltaTable.forPath(self.spark, loc)
        return DeltaTable.forName(self.spark, loc)

    def read(self, name: str) -> DataFrame:
        """The current version of table ``name``."""
        loc = self.location(name)
        if self._by_path:
            return self.spark.read.format("delta").load(loc)
        return self.spark.read.table(loc)

    def create_if_absent(
        self,
        name: str,
        schema: StructType,
        partition_by: Sequence[str] = (),
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Create an empty table with ``schema`` unless it exists (safe to call from concurrent reruns).

        ``properties`` are added to the shared table properties (e.g. ``parquet.block.size``, which Delta
        passes to the Parquet writer of every later write). A table this instance has created or found once is not
        checked again, so a job that writes one table in many batches pays for the check once.
        """
        if name in self._present:
            return
        self.ensure_schema()
        loc = self.location(name)
        if self.exists(name):
            self._migrate(name, schema)
        elif self._by_path:
            create_table_at(self.spark, loc, schema, partition_by, properties)
        else:
            # Delta's table builder parses at most two name parts; a DataFrameWriterV2 takes catalog.schema.table.
            writer = self.spark.createDataFrame([], schema).writeTo(loc).using("delta")
            for key, value in {**TABLE_PROPERTIES, **(properties or {})}.items():
                writer = writer.tableProperty(key, value)
            if partition_by:
                writer = writer.partitionedBy(*(F.col(c) for c in partition_by))
            try:
                writer.create()
            except AnalysisException as e:  # a concurrent rerun created it in between
                if e.getCondition() != "TABLE_OR_VIEW_ALREADY_EXISTS":
                    raise
        self._present.add(name)

    def _migrate(self, name: str, schema: StructType) -> None:
        """Rewrite ``name`` with the column names of ``schema`` where it still has an old one (RENAMED_COLUMNS),
        adding the nullable columns of ``schema`` it lacks as nulls; a table that needs neither is left as it is."""
        table = self.read(name)
        wanted = schema.fieldNames()
        renames = [(old, new) for old, new in RENAMED_COLUMNS if old in table.columns and new in wanted]
        if not renames or any(new in table.columns for _, new in renames):
            return
        for old, new in renames:
            table = table.withColumnRenamed(old, new)
        for field in schema:
            if field.name not in table.columns and field.nullable:
                table = table.withColumn(field.name, F.lit(None).cast(field.dataType))
        order = [c for c in wanted if c in table.columns] + [c for c in table.columns if c not in wanted]
        partitions = list(self.delta(name).detail().first()["partitionColumns"])  # type: ignore[index]
        writer = table.select(*order).write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if partitions:
            writer = writer.partitionBy(*partitions)
        if self._by_path:
            writer.save(self.location(name))
        else:
            writer.saveAsTable(self.location(name))

    def insert_new(self, name: str, df: DataFrame, keys: Sequence[str], replace_when: str | None = None) -> int:
        """Insert the rows of ``df`` whose key is not in the table yet (a MERGE: atomic and idempotent).

        ``df`` must be unique on ``keys``; rerunning with the same ``df`` changes nothing. ``replace_when``, a SQL
        condition on the table's row (alias ``t``), also replaces a present row with ``df``'s when it holds.
        Returns the number of rows inserted or replaced, as the MERGE reports it.
        """
        self.create_if_absent(name, df.schema)
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        merge = self.delta(name).alias("t").merge(df.alias("s"), condition)
        if replace_when is not None:
            merge = merge.whenMatchedUpdateAll(condition=replace_when)
        row = merge.whenNotMatchedInsertAll().execute().first()
        if row is None:  # delta-spark >= 2.3 always reports MERGE metrics (pyproject pins 4.0)
            raise RuntimeError(f"the MERGE into {name} reported no metrics")
        return int(row["num_inserted_rows"]) + int(row["num_updated_rows"])

    def replace_partition(self, name: str, df: DataFrame, column: str, value: str) -> None:
        """Replace the rows of ``name`` where ``column = value`` with ``df`` in one commit (others untouched)."""
        self.create_if_absent(name, df.schema)
        escaped = value.replace("'", "''")
        loc = self.location(name)
        if self._by_path:
            writer = df.write.format("delta").mode("overwrite").option("replaceWhere", f"`{column}` = '{escaped}'")
            writer.save(loc)
        else:
            df.writeTo(loc).overwrite(F.col(column) == value)

    def overwrite(self, name: str, df: DataFrame) -> None:
        """Replace the whole content of ``name`` with ``df`` in one commit."""
        self.create_if_absent(name, df.schema)
        writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        loc = self.location(name)
        if self._by_path:
            writer.save(loc)
        else:
            writer.saveAsTable(loc)
