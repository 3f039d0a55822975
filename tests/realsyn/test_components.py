"""Connected components and representative choice on known graphs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from realsyn.components import DRIVER_EDGES, ComponentsDidNotConverge, connected_components, group_duplicates

# Both ways of solving a graph: in Spark rounds (no graph is small enough for the driver) and on the driver.
BOTH_WAYS = pytest.mark.parametrize("driver_edges", [0, DRIVER_EDGES], ids=["rounds", "driver"])


def _components(
    spark: SparkSession, edges: list[tuple[str, str]], driver_edges: int, extra: Sequence[str] = ()
) -> dict[str, str]:
    e = spark.createDataFrame(edges, "src string, dst string").repartition(3)
    v = spark.createDataFrame([(x,) for x in extra], "id string") if extra else None
    return {r["id"]: r["component"] for r in connected_components(e, vertices=v, driver_edges=driver_edges).collect()}


@BOTH_WAYS
def test_chain_star_and_disconnected_parts(spark: SparkSession, driver_edges: int) -> None:
    # A shuffled chain g-c-e-a-f, a star around z (centre is not the smallest), a single edge, isolated vertices.
    edges = [("g", "c"), ("e", "c"), ("e", "a"), ("f", "a"), ("z", "q"), ("r", "z"), ("z", "p"), ("y", "x")]
    got = _components(spark, edges, driver_edges, extra=["k", "a", "m"])
    assert got == {
        "a": "a", "c": "a", "e": "a", "f": "a", "g": "a",
        "p": "p", "q": "p", "r": "p", "z": "p",
        "x": "x", "y": "x",
        "k": "k", "m": "m",
    }  # fmt: skip


@BOTH_WAYS
def test_long_random_order_chain_and_duplicates_self_loops(spark: SparkSession, driver_edges: int) -> None:
    order = [(i * 37) % 101 for i in range(101)]  # a permutation of 0..100
    names = [f"n{i:03d}" for i in order]
    edges = [(names[i], names[i + 1]) for i in range(100)]
    edges += [(b, a) for a, b in edges[:10]] + [("n050", "n050"), ("s", "s")]
    got = _components(spark, edges, driver_edges)
    assert got == {**{f"n{i:03d}": "n000" for i in range(101)}, "s": "s"}


@BOTH_WAYS
def test_integer_ids_use_numeric_order(spark: SparkSession, driver_edges: int) -> None:
    e = spark.createDataFrame([(10, 9), (9, 100), (7, 8)], "src long, dst long")
    got = sorted(tuple(r) for r in connected_components(e, driver_edges=driver_edges).collect())
    assert got == [(7, 7), (8, 7), (9, 9), (10, 9), (100, 9)]


@BOTH_WAYS
def test_ids_order_by_code_point_and_a_graph_without_edges(spark: SparkSession, driver_edges: int) -> None:
    # Spark orders strings by their UTF-8 bytes: "Z" < "a" < "é" < "漢", whatever Python's locale would say.
    got = _components(spark, [("漢", "é"), ("é", "a"), ("b", "Z")], driver_edges, extra=["é"])
    assert got == {"漢": "a", "é": "a", "a": "a", "b": "Z", "Z": "Z"}
    assert _components(spark, [("s", "s")], driver_edges, extra=["t"]) == {"s": "s", "t": "t"}


def test_non_convergence_is_an_error(spark: SparkSession) -> None:
    e = spark.createDataFrame([("d", "c"), ("c", "b"), ("b", "a"), ("a", "e"), ("e", "f")], "src string, dst string")
    with pytest.raises(ComponentsDidNotConverge):
        connected_components(e, max_iterations=1, driver_edges=0)


def test_group_duplicates_picks_the_largest_then_smallest_id(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [("a", 10), ("b", 30), ("c", 30), ("d", 5), ("e", 1), ("f", 7)], "id string, pixels int"
    )
    # {a, b, c} by a chain, {d, e} by a pair, f alone; a pair naming an unknown id is ignored.
    pairs = spark.createDataFrame([("a", "b"), ("c", "b"), ("e", "d"), ("f", "zz")], "src string, dst string")
    got = group_duplicates(items, pairs, "id", [F.desc("pixels")])
    expected = spark.createDataFrame(
        [
            ("a", 10, "a", "b"),
            ("b", 30, "a", "b"),
            ("c", 30, "a", "b"),
            ("d", 5, "d", "d"),
            ("e", 1, "d", "d"),
            ("f", 7, "f", "f"),
        ],
        "id string, pixels int, component string, representative string",
    )
    assertDataFrameEqual(got.select(*expected.columns), expected)
