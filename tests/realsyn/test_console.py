"""What a run shows: Spark's task time over a span (the pipeline's busy share)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from realsyn.console import indent, task_time_share


def test_task_time_share_counts_the_tasks_run_in_the_span(spark: SparkSession) -> None:
    sc = spark.sparkContext

    def nap(rows: Iterator[object]) -> Iterator[int]:
        time.sleep(2.0)
        yield sum(1 for _ in rows)

    sc.parallelize(range(2), 2).sum()  # Python workers started before the span
    # Two tasks of ~2 s each on the session's two slots: most of the slots' time.
    start = datetime.now(timezone.utc)
    assert sc.parallelize(range(2), 2).mapPartitions(nap).sum() == 2
    end = datetime.now(timezone.utc)
    busy = task_time_share(sc, start, end)
    assert busy is not None and 0.5 <= busy <= 1.0, busy
    # The driver alone (no job in the span): no task time.
    start = datetime.now(timezone.utc)
    time.sleep(0.5)
    assert task_time_share(sc, start, datetime.now(timezone.utc)) == 0.0


def test_a_summary_line_is_wrapped_under_its_stage_without_breaking_paths() -> None:
    path = "/lake/" + "x" * 150 + "/report.html"
    text = "report: " + "word " * 40 + path
    lines = indent(text, 60).splitlines()
    assert lines[0].startswith("      report: ") and all(line.startswith(" " * 8) for line in lines[1:])
    assert all(len(line) <= 60 for line in lines if path not in line)
    assert any(line.strip() == path for line in lines)  # a path longer than the width stands alone, whole
