"""Test inputs as rows of the tables' contracts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pyspark.sql import DataFrame, SparkSession

from realsyn.contracts import Table
from realsyn.tables import Lakehouse


def rows_frame(spark: SparkSession, table: Table, rows: Iterable[Mapping[str, object]]) -> DataFrame:
    """``rows`` as a frame of ``table``'s declared schema; a column a row does not name is null."""
    unknown = {c for row in rows for c in row} - set(table.columns)
    if unknown:
        raise KeyError(f"{table}: no column {', '.join(sorted(unknown))}")
    return spark.createDataFrame([tuple(row.get(c) for c in table.columns) for row in rows], table.schema)


def write_foreign(lakehouse: Lakehouse, table: Table, df: DataFrame) -> None:
    """Write ``df`` as ``table`` the way another tool might, with ``df``'s own schema and no contract check (for
    tests of what a stage does with rows realsyn itself would never write, such as a null embedding)."""
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(lakehouse.location(table))
