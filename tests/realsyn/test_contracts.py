"""Table contracts: every write is checked against its table's declaration, and tables keep the declared schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.contracts import (
    BRONZE_DOCUMENTS,
    GOLD_DATASET,
    SILVER_RETRIEVAL,
    TABLES,
    ContractError,
    markdown,
    same_type,
)
from realsyn.tables import Lakehouse
from tests.support.tables import rows_frame

REPO = Path(__file__).resolve().parents[2]
RETRIEVED = {"image_id": "i1", "model_id": "m", "rank": 1, "sentence_id": "s1", "score": 0.5, "leaf_id": 3}


def test_every_key_is_a_column_and_every_reject_table_has_a_reason_and_a_detail() -> None:
    assert len(TABLES) == 32
    for name, table in TABLES.items():
        assert table.keys and set(table.keys) <= set(table.columns), name
        if name.endswith("_rejects"):
            assert {"reason", "detail"} <= set(table.columns), name


def test_conform_names_each_missing_unknown_and_mistyped_column(spark: SparkSession) -> None:
    good = rows_frame(spark, SILVER_RETRIEVAL, [RETRIEVED])
    bad = good.drop("leaf_id").withColumn("rank", F.col("rank").cast("string")).withColumn("extra", F.lit(1))
    with pytest.raises(ContractError) as e:
        SILVER_RETRIEVAL.conform(bad)
    assert str(e.value) == (
        "silver.retrieval: the rows to write do not match the table: missing leaf_id; not in the contract: extra; "
        "rank is string, not int"
    )
    # The declared order, whatever order the frame has; nullability is left to Delta.
    shuffled = good.select(*reversed(good.columns))
    assert SILVER_RETRIEVAL.conform(shuffled).columns == SILVER_RETRIEVAL.columns


def test_a_refused_write_writes_nothing(lakehouse: Lakehouse) -> None:
    frame = rows_frame(lakehouse.spark, SILVER_RETRIEVAL, [RETRIEVED]).drop("score")
    with pytest.raises(ContractError, match="missing score"):
        lakehouse.insert_new(SILVER_RETRIEVAL, frame)
    assert not lakehouse.exists(SILVER_RETRIEVAL)


def test_an_overwrite_keeps_the_declared_schema_and_not_null_holds(lakehouse: Lakehouse) -> None:
    spark = lakehouse.spark
    # A frame whose columns are all nullable (as after a join or a cast) still leaves the table as declared.
    nullable = T.StructType([T.StructField(f.name, f.dataType, True) for f in SILVER_RETRIEVAL.schema.fields])
    loose = spark.createDataFrame([tuple(RETRIEVED.values())], nullable)
    assert all(f.nullable for f in loose.schema.fields)
    lakehouse.overwrite(SILVER_RETRIEVAL, loose)
    on_disk = json.loads(DeltaTable(lakehouse.location(SILVER_RETRIEVAL)).schema().to_json())["fields"]
    assert on_disk == json.loads(SILVER_RETRIEVAL.schema.json())["fields"]
    with pytest.raises(Exception, match="NOT_NULL_CONSTRAINT"):
        lakehouse.overwrite(SILVER_RETRIEVAL, loose.withColumn("sentence_id", F.lit(None).cast("string")))
    assert [r["sentence_id"] for r in lakehouse.read(SILVER_RETRIEVAL).collect()] == ["s1"]


def test_the_dataset_takes_one_boolean_column_per_scale_after_cluster_rank(spark: SparkSession) -> None:
    frame = rows_frame(spark, GOLD_DATASET, [{"image_id": "i1"}])
    with_scales = frame.withColumn("scale_all", F.lit(True)).withColumn("scale_n50", F.lit(False))
    columns = GOLD_DATASET.conform(with_scales).columns
    at = columns.index("cluster_rank")
    assert columns[at + 1 : at + 3] == ["scale_all", "scale_n50"]
    assert [c for c in columns if not c.startswith("scale_")] == GOLD_DATASET.columns
    with pytest.raises(ContractError, match="not in the contract: scale_n9"):
        GOLD_DATASET.conform(frame.withColumn("scale_n9", F.lit(1)))


def test_same_type_ignores_only_nullability() -> None:
    declared = BRONZE_DOCUMENTS.schema
    loose = declared.fromJson(json.loads(re.sub(r'"nullable": ?false', '"nullable": true', declared.json())))
    assert same_type(loose, declared) and loose != declared
    assert not same_type(SILVER_RETRIEVAL.schema["score"].dataType, SILVER_RETRIEVAL.schema["rank"].dataType)


def test_docs_list_the_contracts() -> None:
    assert (REPO / "docs" / "tables.md").read_text() == markdown(), "rerun: python -m realsyn.contracts docs/tables.md"
