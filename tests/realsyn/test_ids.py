"""Ids are the same in Spark and in Python, and differ where their inputs differ."""

from __future__ import annotations

from pyspark.sql import SparkSession

from realsyn.ids import bytes_id, bytes_id_col, stable_id, stable_id_col


def test_spark_and_python_ids_agree(spark: SparkSession) -> None:
    rows = [("mmc4", "https://a.example/1"), ("mmc4", None), ("obelics", "https://a.example/1"), ("é", "ü")]
    df = spark.createDataFrame(rows, "source string, url string")
    got = [r[0] for r in df.select(stable_id_col("source", "url")).collect()]
    assert got == [stable_id(s, u) for s, u in rows]
    data = spark.createDataFrame([(b"\x00\xff image bytes",)], "content binary")
    assert data.select(bytes_id_col("content")).first()[0] == bytes_id(b"\x00\xff image bytes")  # type: ignore[index]


def test_ids_separate_their_parts() -> None:
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert stable_id("a", None) != stable_id("a", "")
    assert stable_id("a", None) != stable_id("a")
    assert len(stable_id("x")) == 32
    assert bytes_id(b"abc") == "ba7816bf8f01cfea414140de5dae2223"  # SHA-256 test vector of FIPS 180-2, first 128 bits
