"""Keep-or-reject bookkeeping: the first failing check names the reason, the split on it, and gold.funnel's rows."""

from __future__ import annotations

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from realsyn.contracts import FUNNEL
from realsyn.funnel import FunnelStep, Models, first_reason, format_funnel, split, write_funnel
from realsyn.tables import Lakehouse


def test_the_first_failing_check_names_the_reason_and_split_parts_on_it(spark: SparkSession) -> None:
    df = spark.createDataFrame([("a", 4), ("b", 13), ("c", 3), ("d", None)], "id string, n int")
    checks = [(F.col("n") > 10, "too_large"), (F.col("n") % 2 == 1, "odd")]
    judged = df.withColumn("reason", first_reason(checks))
    # b fails both checks: the first one wins; d's conditions are null, which counts as not failing
    assertDataFrameEqual(
        judged,
        [
            Row(id="a", n=4, reason=None),
            Row(id="b", n=13, reason="too_large"),
            Row(id="c", n=3, reason="odd"),
            Row(id="d", n=None, reason=None),
        ],
    )
    kept, rejected = split(judged)
    assert kept.columns == ["id", "n"]
    assertDataFrameEqual(kept, [Row(id="a", n=4), Row(id="d", n=None)])
    assertDataFrameEqual(rejected, [Row(id="b", n=13, reason="too_large"), Row(id="c", n=3, reason="odd")])
    assert judged.withColumn("reason", first_reason([])).filter(F.col("reason").isNotNull()).count() == 0


def test_a_step_counts_what_it_dropped_and_prints_as_a_table() -> None:
    steps = [FunnelStep("parse", 1500, 1200), FunnelStep("dedup", 1200, 1200)]
    assert [s.rows_rejected for s in steps] == [300, 0]
    assert format_funnel(steps, "ingest").splitlines() == [
        "ingest",
        "step".ljust(32) + "in".rjust(14) + "out".rjust(14) + "dropped".rjust(14),
        "parse".ljust(32) + "1,500".rjust(14) + "1,200".rjust(14) + "300".rjust(14),
        "dedup".ljust(32) + "1,200".rjust(14) + "1,200".rjust(14) + "0".rjust(14),
    ]


def funnel_rows(lakehouse: Lakehouse) -> set[tuple[object, ...]]:
    """(stage, model_id, step_index, step, rows in, out, rejected) of every row of gold.funnel."""
    cols = ("stage", "model_id", "step_index", "step", "rows_in", "rows_out", "rows_rejected")
    return {tuple(r) for r in lakehouse.read(FUNNEL).select(*cols).collect()}


def test_write_funnel_replaces_only_its_own_rows_and_skips_an_unchanged_write(lakehouse: Lakehouse) -> None:
    write_funnel(lakehouse, "ingest", [FunnelStep("parse", 10, 8), FunnelStep("dedup", 8, 7)])
    write_funnel(lakehouse, "embed", [FunnelStep("usable", 7, 7)], Models(model_id="m1"))
    write_funnel(lakehouse, "embed", [FunnelStep("usable", 7, 6)], Models(model_id="m2"))
    # a rerun of ingest with one step: its two rows go, the embed funnels (both models) stay
    write_funnel(lakehouse, "ingest", [FunnelStep("parse", 12, 9)])
    expected = {
        ("ingest", None, 0, "parse", 12, 9, 3),
        ("embed", "m1", 0, "usable", 7, 7, 0),
        ("embed", "m2", 0, "usable", 7, 6, 1),
    }
    assert funnel_rows(lakehouse) == expected
    # the same steps again: no new table version
    version = lakehouse.version(FUNNEL)
    write_funnel(lakehouse, "ingest", [FunnelStep("parse", 12, 9)])
    write_funnel(lakehouse, "embed", [FunnelStep("usable", 7, 6)], Models(model_id="m2"))
    assert lakehouse.version(FUNNEL) == version
    # one model's funnel changed: only its row is replaced
    write_funnel(lakehouse, "embed", [FunnelStep("usable", 7, 5)], Models(model_id="m2"))
    assert lakehouse.version(FUNNEL) == version + 1
    assert funnel_rows(lakehouse) == expected - {("embed", "m2", 0, "usable", 7, 6, 1)} | {
        ("embed", "m2", 0, "usable", 7, 5, 2)
    }
