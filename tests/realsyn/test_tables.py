"""The Lakehouse: path tables a killed first commit left behind, and metastore mode (storage.catalog) against
Spark's session catalog with Delta's catalog."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from realsyn.config import ConfigError, load_config
from realsyn.config_sections import Config, DemoCorpusConfig, StorageConfig
from realsyn.contracts import (
    BRONZE_DOCUMENTS,
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    BRONZE_TEXTS,
    FUNNEL,
    SILVER_IMAGE_CLUSTERS,
    SILVER_SENTENCE_PHRASES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
    ContractError,
    Table,
)
from realsyn.demo_corpus import generate, with_demo_inputs
from realsyn.stages.extract_sentences import run_extract_sentences
from realsyn.stages.ingest import run_ingest
from realsyn.tables import Lakehouse, create_table_at
from tests.support.tables import rows_frame

REPO = Path(__file__).resolve().parents[2]
DOCUMENT = {"doc_id": "d1", "source": "s", "layout": "mmc4", "input_file": "f", "n_texts": 1, "n_images": 0}
# Ingest writes with insert_new (MERGE), sentence extraction with overwrite, the funnel with replace_partition.
WRITTEN = (
    BRONZE_DOCUMENTS,
    BRONZE_TEXTS,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    SILVER_SENTENCES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCE_PHRASES,
    FUNNEL,
)


def demo_config(tmp_path: Path, storage: StorageConfig) -> Config:
    """conf/local.yaml on a 12-document demo corpus under ``tmp_path``, with ``storage``."""
    demo = DemoCorpusConfig(kind="photos", output=str(tmp_path / "raw"), documents=12, synthetic_images=4)
    out = generate(demo)
    broken = out / "mmc4" / "broken.jsonl"  # one malformed line, so that bronze.ingest_rejects has a row
    if not broken.exists():
        broken.write_text('{"url": "https://broken.example/1", "text_list": [\n')
    cfg = load_config(REPO / "conf" / "local.yaml")
    return with_demo_inputs(cfg.model_copy(update={"demo": demo, "storage": storage}))


def run_twice(lakehouse: Lakehouse, cfg: Config) -> None:
    """Ingest and sentence extraction, then both again (the rerun must change nothing)."""
    for _ in range(2):
        run_ingest(lakehouse, cfg)
        run_extract_sentences(lakehouse, cfg)


def test_a_log_without_a_commit_is_cleared_and_a_committed_one_kept(spark: SparkSession, tmp_path: Path) -> None:
    lakehouse = Lakehouse(spark, StorageConfig(root=str(tmp_path)))
    table = SILVER_IMAGE_CLUSTERS
    rows = spark.createDataFrame([("a", "m", 0), ("b", "m", 1)], table.schema)
    # What a process killed inside the table's first commit leaves: the log folder and a temporary file in it.
    log = Path(lakehouse.location(table)) / "_delta_log"
    log.mkdir(parents=True)
    (log / ".00000000000000000000.json.0f3c.tmp").write_text('{"commitInfo": {}}')
    assert not lakehouse.exists(table)
    lakehouse.replace_partition(table, rows, "model_id", "m")
    assertDataFrameEqual(lakehouse.read(table), rows)
    # A committed table is a table: a second writer (a fresh Lakehouse) appends to it and clears nothing.
    Lakehouse(spark, StorageConfig(root=str(tmp_path))).insert_new(
        table, spark.createDataFrame([("c", "m", 1)], table.schema)
    )
    assert sorted(r.image_id for r in lakehouse.read(table).collect()) == ["a", "b", "c"]


def test_a_table_of_an_earlier_version_gets_the_columns_its_contract_added(spark: SparkSession, tmp_path: Path) -> None:
    lakehouse = Lakehouse(spark, StorageConfig(root=str(tmp_path)))
    table = BRONZE_FETCHED_IMAGES
    earlier = T.StructType([f for f in table.schema.fields if f.name != "phash"])  # before the fetch stage hashed
    create_table_at(spark, lakehouse.location(table), earlier)
    old = {"url_id": "u1", "url": "https://example.org/1", "status": "http_error", "retryable": False}
    spark.createDataFrame([old], earlier).write.format("delta").mode("append").save(lakehouse.location(table))
    new = {"url_id": "u2", "url": "https://example.org/2", "status": "ok", "image_id": "i2", "phash": -5}
    assert lakehouse.insert_new(table, rows_frame(spark, table, [new])) == 1
    got = {r["url_id"]: r["phash"] for r in lakehouse.read(table).collect()}
    assert got == {"u1": None, "u2": -5}
    assert lakehouse.read(table).schema == table.schema
    # A column declared NOT NULL cannot be added to rows already written: the error names table and column.
    required = Table(
        "bronze.fetched_images",
        T.StructType([*earlier.fields, T.StructField("x", T.LongType(), False)]),
        ("url_id",),
        "",
    )
    with pytest.raises(ContractError, match=r"bronze.fetched_images: .* lacks x, declared NOT NULL"):
        Lakehouse(spark, StorageConfig(root=str(tmp_path))).create_if_absent(required)


def test_a_version_is_the_one_the_history_gives_through_every_kind_of_write(
    spark: SparkSession, tmp_path: Path
) -> None:
    schema = f"realsyn_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA spark_catalog.{schema} LOCATION '{tmp_path / 'warehouse' / schema}'")
    try:
        for storage in (StorageConfig(root=str(tmp_path / "lake")), StorageConfig(catalog=f"spark_catalog.{schema}")):
            lakehouse = Lakehouse(spark, storage)
            table = SILVER_IMAGE_CLUSTERS
            a, b, c = (spark.createDataFrame([(x, "m", i)], table.schema) for i, x in enumerate("abc"))
            writes = [("insert_new", a), ("insert_new", a), ("append", b), ("replace_partition", a)]
            writes += [("overwrite", b), ("insert_new", a), ("append", c)]  # the second insert_new adds nothing
            # Past version 10, where Delta writes a checkpoint.
            for method, rows in writes + writes:
                extra = ("model_id", "m") if method == "replace_partition" else ()
                getattr(lakehouse, method)(table, rows, *extra)
                assert lakehouse.version(table) == lakehouse.delta(table).history(1).first()["version"], storage
            assert lakehouse.version(table) > 10, storage
            assert sorted(r.image_id for r in lakehouse.read(table).collect()) == ["a", "b", "c"], storage
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")


def test_catalog_mode_gives_the_tables_of_path_mode(spark: SparkSession, tmp_path: Path) -> None:
    schema = f"realsyn_{uuid.uuid4().hex[:8]}"
    # The schema's folder is under tmp_path, so its managed tables are too (the warehouse dir is the cwd's).
    spark.sql(f"CREATE SCHEMA spark_catalog.{schema} LOCATION '{tmp_path / 'warehouse' / schema}'")
    try:
        by_path = Lakehouse(spark, StorageConfig(root=str(tmp_path / "lake")))
        path_cfg = demo_config(tmp_path, by_path.storage)
        run_ingest(by_path, path_cfg)
        run_extract_sentences(by_path, path_cfg)

        by_name = Lakehouse(spark, StorageConfig(catalog=f"spark_catalog.{schema}"))
        run_twice(by_name, demo_config(tmp_path, by_name.storage))

        names = {r.tableName for r in spark.sql(f"SHOW TABLES IN spark_catalog.{schema}").collect()}
        assert names == {table.name.replace(".", "_") for table in WRITTEN}
        for name in WRITTEN:
            assert by_name.exists(name)
            assert by_name.location(name) == f"spark_catalog.{schema}.{name.name.replace('.', '_')}"
            expected = by_path.read(name)
            assert by_name.read(name).count() > 0, name
            assertDataFrameEqual(by_name.read(name), expected)
            # Managed Delta tables, each a folder of the schema's location.
            detail = spark.sql(f"DESCRIBE DETAIL {by_name.location(name)}").first()
            assert detail is not None and detail["format"] == "delta"
            assert str(detail["location"]).startswith(f"file:{tmp_path / 'warehouse' / schema}/")
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")


def test_an_absent_schema_is_created(spark: SparkSession, tmp_path: Path) -> None:
    schema = f"realsyn_{uuid.uuid4().hex[:8]}"
    lakehouse = Lakehouse(spark, StorageConfig(catalog=f"spark_catalog.{schema}"))
    try:
        assert not spark.catalog.databaseExists(f"spark_catalog.{schema}")
        assert not lakehouse.exists(BRONZE_DOCUMENTS)
        df = rows_frame(spark, BRONZE_DOCUMENTS, [DOCUMENT])
        assert lakehouse.insert_new(BRONZE_DOCUMENTS, df) == 1
        assert lakehouse.insert_new(BRONZE_DOCUMENTS, df) == 0
        assert spark.catalog.databaseExists(f"spark_catalog.{schema}")
        assertDataFrameEqual(spark.table(f"spark_catalog.{schema}.bronze_documents"), df)
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{schema} CASCADE")


def test_an_unknown_catalog_is_named(spark: SparkSession) -> None:
    lakehouse = Lakehouse(spark, StorageConfig(catalog="no_such_catalog.realsyn"))
    df = rows_frame(spark, BRONZE_DOCUMENTS, [DOCUMENT])
    with pytest.raises(
        ConfigError, match=r"storage\.catalog: cannot use schema 'realsyn' of catalog 'no_such_catalog'"
    ):
        lakehouse.insert_new(BRONZE_DOCUMENTS, df)
