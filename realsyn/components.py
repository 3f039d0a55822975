"""Connected components of an edge DataFrame in Spark, and one representative per component.

Used by every near-duplicate step (perceptual and semantic images, near and semantic sentences): a step finds
pairs of items that are "the same", and the transitive closure of those pairs (union-find) makes the groups.

Algorithm: alternating large-star / small-star (Kiveris et al. 2014, "Connected Components in MapReduce and
Beyond"), entirely in DataFrames; the driver only sees one small count per round. Both steps rewire edges
towards smaller vertex ids without ever changing which vertices are connected; at the fixed point every
component is a star whose centre is its smallest vertex id. O(log^2 n) rounds are proven enough, and the
rounds needed in practice grow like log n (a random-order chain of 2,000 vertices takes 7 to 9). Each round is
a few Spark jobs, so a graph of at most ``driver_edges`` edges (:data:`DRIVER_EDGES` by default, tens of MB) is
instead collected once and solved on the driver by scipy's connected components: the same labels, in one job.

Determinism: the component id is the smallest vertex id of the component under Spark's ordering of the id
column (lexicographic for strings, numeric for integers), whatever the partitioning or the order of edges.
The representative of a group is chosen by :func:`choose_representatives` with a caller-given ranking, and ties
are always broken by the smallest id, so reruns give identical results. :func:`merge_into_representatives` then
gives each representative what its group holds (documents, URLs, counts) and sets the other members apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

VERTEX = "id"
COMPONENT = "component"
REPRESENTATIVE = "representative"
# Graphs with at most this many distinct edges are solved on the driver (two ids per edge: ~100 MB of strings).
DRIVER_EDGES = 1_000_000


class ComponentsDidNotConverge(RuntimeError):
    """The large-star / small-star rounds did not reach their fixed point within ``max_iterations`` rounds."""


def _checkpoint(df: DataFrame) -> DataFrame:
    """Cut the lineage so the plan does not grow with every round (eager local checkpoint)."""
    return df.localCheckpoint(eager=True)


def connected_components(
    edges: DataFrame,
    src: str = "src",
    dst: str = "dst",
    vertices: DataFrame | None = None,
    max_iterations: int = 64,
    driver_edges: int = DRIVER_EDGES,
) -> DataFrame:
    """Connected components of the undirected graph given by ``edges``: a DataFrame ``(id, component)``.

    ``edges`` holds one row per edge in columns ``src`` and ``dst`` (same type; direction, duplicates and self
    loops do not matter). ``vertices``, when given, is a one-column DataFrame of extra vertex ids (same type):
    those without edges come back as their own component. ``component`` is the smallest vertex id of the
    component. Raises :class:`ComponentsDidNotConverge` when the edge set still changes after
    ``max_iterations`` rounds (a round is one large-star and one small-star step; O(log^2 n) rounds are
    proven enough, and a handful suffice in practice). A graph of at most ``driver_edges`` distinct edges is
    solved on the driver instead (:func:`_centres_on_driver`), with the same result.
    """
    pairs = edges.select(F.col(src).alias("a"), F.col(dst).alias("b")).where(
        F.col("a").isNotNull() & F.col("b").isNotNull()
    )
    all_vertices = pairs.select(F.col("a").alias(VERTEX)).union(pairs.select(F.col("b").alias(VERTEX)))
    if vertices is not None:
        extra = vertices.select(F.col(vertices.columns[0]).alias(VERTEX)).where(F.col(VERTEX).isNotNull())
        all_vertices = all_vertices.union(extra)
    all_vertices = all_vertices.distinct()

    # Each edge once, as (larger, smaller), without self loops.
    current = _checkpoint(_oriented(pairs))
    if current.count() <= driver_edges:
        centre = _centres_on_driver(current)
    else:
        centre = _centres_in_rounds(current, max_iterations)
    return all_vertices.join(centre, all_vertices[VERTEX] == centre["a"], "left").select(
        VERTEX, F.coalesce(F.col("m"), F.col(VERTEX)).alias(COMPONENT)
    )


def _centres_in_rounds(oriented: DataFrame, max_iterations: int) -> DataFrame:
    """(a, m): the smallest vertex m of the component of every vertex a that is not the smallest, by large-star /
    small-star rounds over the ``oriented`` edges until nothing changes."""
    current = oriented
    for _ in range(max_iterations):
        updated = _checkpoint(_small_star(_large_star(current)))
        changed = updated.exceptAll(current).union(current.exceptAll(updated)).limit(1).count()
        current = updated
        if changed == 0:
            break
    else:
        raise ComponentsDidNotConverge(f"connected components still changing after {max_iterations} rounds")
    # At the fixed point every component is a star around its smallest vertex: (member, centre) edges.
    return current.groupBy("a").agg(F.min("b").alias("m"))


def _centres_on_driver(oriented: DataFrame) -> DataFrame:
    """(a, m): the smallest vertex m of the component of every vertex a with an edge, from the ``oriented`` edges
    collected to the driver. Ids are sorted as Spark sorts them (numbers by value, strings by code point, which
    is UTF-8's byte order), so m is the vertex the rounds would choose."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix, csgraph

    id_type = oriented.schema["a"].dataType
    schema = T.StructType([T.StructField("a", id_type, False), T.StructField("m", id_type, False)])
    edges = oriented.toPandas()
    if edges.empty:
        return oriented.sparkSession.createDataFrame([], schema)
    codes, ids = pd.factorize(pd.concat([edges["a"], edges["b"]], ignore_index=True), sort=True)
    n, k = len(ids), len(edges)
    graph = coo_matrix((np.ones(k, dtype=np.int8), (codes[:k], codes[k:])), shape=(n, n))
    _, label = csgraph.connected_components(graph, directed=False)
    smallest = pd.Series(np.arange(n)).groupby(label).transform("min").to_numpy()  # codes are in id order
    ids = np.asarray(ids)
    return oriented.sparkSession.createDataFrame(pd.DataFrame({"a": ids, "m": ids[smallest]}), schema)


def _oriented(pairs: DataFrame) -> DataFrame:
    """Edges as distinct (a, b) with a > b; self loops dropped."""
    return (
        pairs.where(F.col("a") != F.col("b"))
        .select(F.greatest("a", "b").alias("a"), F.least("a", "b").alias("b"))
        .distinct()
    )


def _large_star(oriented: DataFrame) -> DataFrame:
    """Large-star step: every vertex u links its larger neighbours to the smallest of u and its neighbours."""
    both = oriented.union(oriented.select(F.col("b").alias("a"), F.col("a").alias("b")))
    smallest = both.groupBy("a").agg(F.least(F.min("b"), F.col("a")).alias("m"))
    linked = (
        both.where(F.col("b") > F.col("a")).join(smallest, "a").select(F.col("b").alias("a"), F.col("m").alias("b"))
    )
    return _oriented(linked)


def _small_star(oriented: DataFrame) -> DataFrame:
    """Small-star step: every vertex u links itself and its smaller neighbours to the smallest of them."""
    smallest = oriented.groupBy("a").agg(F.min("b").alias("m"))
    joined = oriented.join(smallest, "a")
    linked = joined.select(F.col("b").alias("a"), F.col("m").alias("b")).union(
        joined.select(F.col("a"), F.col("m").alias("b"))
    )
    return _oriented(linked)


def by_resolution() -> list[Column]:
    """The ranking that leads a group of images: the largest width * height first."""
    return [F.desc(F.col("width").cast("long") * F.col("height").cast("long"))]


def choose_representatives(
    df: DataFrame,
    group_col: str,
    id_col: str,
    order_by: Sequence[Column],
    output_col: str = REPRESENTATIVE,
) -> DataFrame:
    """Add ``output_col``: the id of the first row of each group when ranked by ``order_by``, then by smallest id.

    ``order_by`` lists sort columns (e.g. ``[F.desc("pixels"), F.asc("quality")]``); the smallest ``id_col``
    always breaks the remaining ties, so the choice is deterministic. Null ranking values sort last.
    """
    ordering = [*order_by, F.col(id_col).asc()]
    window = Window.partitionBy(group_col).orderBy(*ordering)
    return (
        df.withColumn("_rank", F.row_number().over(window))
        .withColumn(
            output_col,
            F.first(F.when(F.col("_rank") == 1, F.col(id_col)), ignorenulls=True).over(
                Window.partitionBy(group_col).rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
            ),
        )
        .drop("_rank")
    )


def group_duplicates(
    items: DataFrame,
    pairs: DataFrame,
    id_col: str,
    order_by: Sequence[Column],
    src: str = "src",
    dst: str = "dst",
    max_iterations: int = 64,
) -> DataFrame:
    """Group ``items`` by the transitive closure of duplicate ``pairs`` and pick one representative per group.

    Returns ``items`` with two more columns: ``component`` (the smallest item id of the group; an item without
    pairs is a group of one) and ``representative`` (chosen by :func:`choose_representatives` with
    ``order_by``, ties to the smallest id). Pairs whose ids are not in ``items`` are ignored.
    """
    ids = items.select(F.col(id_col).alias(VERTEX))
    known = (
        pairs.select(F.col(src).alias("src"), F.col(dst).alias("dst"))
        .join(ids.withColumnRenamed(VERTEX, "src"), "src", "left_semi")
        .join(ids.withColumnRenamed(VERTEX, "dst"), "dst", "left_semi")
    )
    labels = connected_components(known, "src", "dst", vertices=ids, max_iterations=max_iterations)
    grouped = items.join(labels.withColumnRenamed(VERTEX, id_col), id_col, "left")
    return choose_representatives(grouped, COMPONENT, id_col, order_by)


def merge_into_representatives(
    grouped: DataFrame, id_col: str, unions: Sequence[str] = (), sums: Sequence[str] = ()
) -> tuple[DataFrame, DataFrame]:
    """(representatives, others) of ``grouped``, the rows of :func:`group_duplicates` (or of
    :func:`choose_representatives` with the default ``output_col``).

    A representative row keeps its own columns, except that each array column of ``unions`` becomes the sorted,
    distinct union of its group's arrays (the documents or URLs of every member) and each column of ``sums`` the
    sum over its group (occurrences). The other members come back as they are, ``representative`` naming the row
    that stands for them.
    """
    merged = grouped.groupBy(REPRESENTATIVE).agg(
        *[F.array_sort(F.array_distinct(F.flatten(F.collect_list(c)))).alias(c) for c in unions],
        *[F.sum(c).alias(c) for c in sums],
    )
    is_rep = F.col(id_col) == F.col(REPRESENTATIVE)
    kept = grouped.where(is_rep).drop(*unions, *sums).join(merged, REPRESENTATIVE)
    return kept, grouped.where(~is_rep)
