"""Strict JSON in Spark: one value and nothing after it; a variant that is not a string."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from realsyn.strict_json import JSON_OPTIONS, not_a_string, one_json_value

LINES = {
    '{"a": 1}': True,
    '{"a": "x"} ': True,
    '{"a": 1} {"b": 2}': False,  # two objects on one line
    '{"a": 1} x': False,  # trailing content
    '{"a": 1}] x': False,  # trailing content after "]", which the array wrapping alone lets pass
    '{"a": 1}, "b": 2': False,  # trailing content after ",", which the object wrapping alone lets pass
    "{'a': 1}": False,  # single quotes
    '{"a": ': False,  # unterminated
    '{"a": NaN}': True,  # as Python's json module writes it
}


def test_one_json_object_and_nothing_after_it(spark: SparkSession) -> None:
    df = spark.createDataFrame([(line,) for line in LINES], "raw string")
    got = {r["raw"]: r["ok"] for r in df.select("raw", one_json_value(F.col("raw"), "struct<>").alias("ok")).collect()}
    assert got == LINES


@pytest.mark.parametrize(("raw", "ok"), [("null", True), ("[1, 2]", True), ("2.5", True), ("[1] 2", False)])
def test_one_json_value_of_any_type(spark: SparkSession, raw: str, ok: bool) -> None:
    [row] = spark.createDataFrame([(raw,)], "raw string").select(one_json_value(F.col("raw"), "variant")).collect()
    assert row[0] is ok


def test_long_strings_are_read_and_a_variant_that_is_not_a_string_is_told(spark: SparkSession) -> None:
    long = "x" * 21_000_000  # over Jackson's default limit of 20,000,000 characters in one string
    rows = [(f'{{"url": "{long}"}}',), ('{"url": {"a": 1}}',), ('{"url": 2}',), ('{"url": null}',), ("{}",)]
    url = F.from_json("raw", "struct<url: variant>", JSON_OPTIONS)["url"]
    got = spark.createDataFrame(rows, "raw string").select(F.length(url.cast("string")), not_a_string(url)).collect()
    assert [tuple(r) for r in got] == [(len(long), False), (7, True), (1, True), (None, False), (None, False)]
