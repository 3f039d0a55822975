"""Spark physical plans as tests read them: which operators a column's bytes pass through."""

from __future__ import annotations

from pyspark.sql import DataFrame


def physical_plan(frame: DataFrame) -> str:
    """The plan Spark would run for ``frame`` (with adaptive execution: its initial plan), as text."""
    return str(frame._jdf.queryExecution().executedPlan().toString())


def above_the_bytes(plan: str) -> list[str]:
    """The operators of ``plan`` from the scan that reads image bytes (column ``content``) up to the root, nearest
    first."""
    lines = plan.splitlines()
    depth = [len(line) - len(line.lstrip(" :+-")) for line in lines]
    at = next(i for i, line in enumerate(lines) if "FileScan" in line and "content" in line)
    chain = []
    for i in range(at - 1, -1, -1):
        if depth[i] < depth[at]:
            chain.append(lines[i].lstrip(" :+-").split(" ")[0])
            at = i
    return chain
