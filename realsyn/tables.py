"""The lakehouse that creates, reads and writes realsyn's Delta tables, each as its contract declares it.

A logical name such as ``bronze.documents`` lives at ``<root>/bronze/documents`` when storage is a folder or
URI, or at ``<catalog>.<schema>.bronze_documents`` when storage is a metastore schema. The tables themselves are
declared in :mod:`realsyn.contracts`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from realsyn.config import ConfigError
from realsyn.config_sections import StorageConfig
from realsyn.contracts import TABLE_PROPERTIES, ContractError, Table

# A file of a committed table version in _delta_log: a commit (NNN.json) or a checkpoint (NNN.checkpoint[...].parquet).
_COMMITTED = re.compile(r"[0-9]{20}\.(json|checkpoint\..*parquet|checkpoint\.parquet)")
# A commit file: Delta writes version NNN's actions to NNN.json atomically (put-if-absent), and keeps the newest
# commits when it cleans up old log entries, so the highest such name is the table's version.
_COMMIT = re.compile(r"([0-9]{20})\.json")


def _log_folder(spark: SparkSession, location: str) -> tuple[Any, Any]:
    """The Hadoop file system and path of ``location``'s ``_delta_log`` folder."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    log = jvm.org.apache.hadoop.fs.Path(f"{location.rstrip('/')}/_delta_log")
    return log.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), log


def _log_files(spark: SparkSession, location: str) -> list[str] | None:
    """The names of the files in ``location``'s ``_delta_log`` (a Hadoop FS listing, no Spark job); None when it
    has no log folder."""
    fs, log = _log_folder(spark, location)
    if not fs.exists(log):
        return None
    return [str(status.getPath().getName()) for status in fs.listStatus(log)]


def clear_uncommitted_log(spark: SparkSession, location: str) -> bool:
    """Remove ``location``'s ``_delta_log`` when it holds no committed version; whether there was one to remove.

    A process killed inside a table's first commit leaves the log folder with at most a temporary file in it:
    no version exists, yet Delta's table builder takes the folder for a table and then fails to read it, so
    every rerun would fail. Such a log names no data, so removing it loses nothing.
    """
    names = _log_files(spark, location)
    if names is None or any(_COMMITTED.fullmatch(name) for name in names):
        return False
    fs, log = _log_folder(spark, location)
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

    def location(self, table: Table | str) -> str:
        """Path or fully qualified table name of ``table`` (a contract or its logical name)."""
        layer, _, name = str(table).partition(".")
        if self.storage.catalog is not None:
            return f"{self.storage.catalog}.{layer}_{name}"
        assert self.storage.root is not None
        root = self.storage.root.rstrip("/")
        if "://" not in root and not root.startswith("dbfs:"):
            root = str(Path(root).resolve())  # Delta's table builder takes no relative paths
        return f"{root}/{layer}/{name}"

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

    def exists(self, table: Table | str) -> bool:
        """Whether the Delta table ``table`` exists."""
        loc = self.location(table)
        if self._by_path:
            return DeltaTable.isDeltaTable(self.spark, loc)
        return self.spark.catalog.tableExists(loc)

    def delta(self, table: Table | str) -> DeltaTable:
        """The DeltaTable handle of ``table``."""
        loc = self.location(table)
        if self._by_path:
            return DeltaTable.forPath(self.spark, loc)
        return DeltaTable.forName(self.spark, loc)

    def version(self, table: Table | str) -> int:
        """The current Delta version of ``table`` (from its log; no data is read).

        A path table's version is the highest commit file in its log folder, a listing that runs no Spark job (0.009 s
        on a warm local session against 0.116 s for history(1), bench/delta_ops.py); a catalog table's comes from its
        history.
        """
        if self._by_path:
            names = _log_files(self.spark, self.location(table)) or []
            commits = [int(m[1]) for m in map(_COMMIT.fullmatch, names) if m]
            if commits:
                return max(commits)
        row = self.delta(table).history(1).select("version").first()
        if row is None:
            raise RuntimeError(f"{table} has no history")
        return int(row[0])

    def read(self, table: Table | str) -> DataFrame:
        """The current version of ``table`` (a contract or its logical name)."""
        loc = self.location(table)
        if self._by_path:
            return self.spark.read.format("delta").load(loc)
        return self.spark.read.table(loc)

    def create_if_absent(self, table: Table, properties: Mapping[str, str] | None = None) -> None:
        """Create ``table`` empty, as its contract declares it, unless it exists (safe from concurrent reruns); an
        existing table gets the nullable columns its contract added since it was written (:meth:`add_missing_columns`).

        ``properties`` are added to the contract's (e.g. ``parquet.block.size``, which Delta passes to the Parquet
        writer of every later write). A table this instance has created or found once is not checked again, so a
        job that writes one table in many batches pays for the check once.
        """
        if table.name in self._present:
            return
        self.ensure_schema()
        if not self.exists(table):
            self._create(table, {**TABLE_PROPERTIES, **table.properties, **(properties or {})})
        else:
            self.add_missing_columns(table)
        self._present.add(table.name)

    def add_missing_columns(self, table: Table) -> list[str]:
        """Add to the existing ``table`` the nullable columns its contract declares and it lacks (a table written
        by an earlier version of realsyn); their value is null in every row already there. Returns their names.

        Raises ContractError for a missing column declared NOT NULL, which rows already written cannot hold.
        """
        have = set(self.read(table).columns)
        missing = [f for f in table.schema.fields if f.name not in have]
        required = [f.name for f in missing if not f.nullable]
        if required:
            raise ContractError(
                f"{table.name}: the table at {self.location(table)} lacks {', '.join(required)}, declared NOT NULL: "
                "rewrite it with the stage that writes it"
            )
        if missing:
            name = f"delta.`{self.location(table)}`" if self._by_path else self.location(table)
            columns = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            try:
                self.spark.sql(f"ALTER TABLE {name} ADD COLUMNS ({columns})")
            except AnalysisException:  # a concurrent run added them first
                if any(f.name not in self.read(table).columns for f in missing):
                    raise
        return [f.name for f in missing]

    def _create(self, table: Table, props: Mapping[str, str]) -> None:
        loc = self.location(table)
        if self._by_path:
            create_table_at(self.spark, loc, table.schema, table.partition_by, props)
            return
        # Delta's table builder parses at most two name parts; a DataFrameWriterV2 takes catalog.schema.table.
        writer = self.spark.createDataFrame([], table.schema).writeTo(loc).using("delta")
        for key, value in props.items():
            writer = writer.tableProperty(key, value)
        if table.partition_by:
            writer = writer.partitionedBy(*(F.col(c) for c in table.partition_by))
        try:
            writer.create()
        except AnalysisException as e:  # a concurrent rerun created it in between
            if e.getCondition() != "TABLE_OR_VIEW_ALREADY_EXISTS":
                raise

    def insert_new(self, table: Table, df: DataFrame, replace_when: str | None = None) -> int:
        """Insert the rows of ``df`` whose key (the contract's) is not in ``table`` yet: a MERGE, atomic and
        idempotent.

        ``df`` must have the table's columns (ContractError otherwise) and be unique on its keys; rerunning with the
        same ``df`` changes nothing. ``replace_when``, a SQL condition on the table's row (alias ``t``), also replaces
        a present row with ``df``'s when it holds. Returns the number of rows inserted or replaced, as the MERGE
        reports it.
        """
        df = table.conform(df)
        self.create_if_absent(table)
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in table.keys)
        merge = self.delta(table).alias("t").merge(df.alias("s"), condition)
        if replace_when is not None:
            merge = merge.whenMatchedUpdateAll(condition=replace_when)
        row = merge.whenNotMatchedInsertAll().execute().first()
        if row is None:  # delta-spark >= 2.3 always reports MERGE metrics (pyproject pins 4.0)
            raise RuntimeError(f"the MERGE into {table} reported no metrics")
        return int(row["num_inserted_rows"]) + int(row["num_updated_rows"])

    def append(self, table: Table, df: DataFrame) -> None:
        """Add the rows of ``df`` to ``table`` in one commit, without looking for their keys in it (half a MERGE's
        cost on a small table, bench/delta_ops.py).

        Only for rows whose keys no other commit can hold, such as a run's own rows in gold.runs (keyed by a run
        id minted for the run): a blind append of rows already present would duplicate them.
        """
        df = table.conform(df)
        self.create_if_absent(table)
        loc = self.location(table)
        if self._by_path:
            df.write.format("delta").mode("append").save(loc)
        else:
            df.writeTo(loc).append()

    def replace_partition(self, table: Table, df: DataFrame, column: str, value: str) -> None:
        """Replace the rows of ``table`` where ``column = value`` with ``df`` in one commit (others untouched)."""
        self.replace_where(table, df, {column: value})

    def replace_where(self, table: Table, df: DataFrame, values: Mapping[str, str | None]) -> None:
        """Replace the rows of ``table`` whose columns equal ``values`` (None: is null) with ``df`` in one commit;
        other rows are untouched."""
        df = table.conform(df)
        self.create_if_absent(table)
        loc = self.location(table)
        if self._by_path:
            sql = " AND ".join(
                f"`{c}` IS NULL" if v is None else f"`{c}` = '{v.replace(chr(39), chr(39) * 2)}'"
                for c, v in values.items()
            )
            df.write.format("delta").mode("overwrite").option("replaceWhere", sql).save(loc)
        else:
            condition = F.lit(True)
            for c, v in values.items():
                condition = condition & (F.col(c).isNull() if v is None else F.col(c) == v)
            df.writeTo(loc).overwrite(condition)

    def last_note(self, table: Table) -> str | None:
        """The note (Delta ``userMetadata``) of the last commit to ``table``, None if it has none or does not exist."""
        if not self.exists(table):
            return None
        row = self.delta(table).history(1).select("userMetadata").first()
        return None if row is None else row[0]

    def overwrite(self, table: Table, df: DataFrame, note: str | None = None) -> None:
        """Replace the whole content of ``table`` with ``df`` in one commit.

        The table keeps its declared schema; only a table with config-named columns (``gold.dataset``'s scales)
        takes the schema of ``df``, whose columns the contract has checked. ``note`` goes to the commit's
        ``userMetadata`` (:meth:`last_note` reads it back).
        """
        df = table.conform(df)
        self.create_if_absent(table)
        writer = df.write.format("delta").mode("overwrite")
        if table.open_columns is not None:
            writer = writer.option("overwriteSchema", "true")
        if note is not None:
            writer = writer.option("userMetadata", note)
        loc = self.location(table)
        if self._by_path:
            writer.save(loc)
        else:
            writer.saveAsTable(loc)
