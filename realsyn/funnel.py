"""Keep-or-reject bookkeeping shared by every filtering stage.

A filter step adds one nullable reason column: null keeps the row, a string rejects it. The first failing
check wins, so every rejected row carries exactly one reason. Rows in = kept + rejected, per step, and the
counts go to the ``gold.funnel`` table from which the paper's Figure 2 is drawn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from realsyn.contracts import FUNNEL, FUNNEL_IDENTITY, REASON
from realsyn.tables import Lakehouse


def first_reason(checks: Sequence[tuple[Column, str]]) -> Column:
    """The reason of the first check whose condition is true, else null (keep).

    A condition that evaluates to null counts as not failing; write conditions so that missing values
    are handled explicitly where they matter.
    """
    reason: Column = F.lit(None).cast("string")
    for condition, name in reversed(checks):
        reason = F.when(F.coalesce(condition, F.lit(False)), F.lit(name)).otherwise(reason)
    return reason


def split(df: DataFrame, reason: str = REASON) -> tuple[DataFrame, DataFrame]:
    """Split on the reason column: (kept rows without it, rejected rows with it)."""
    kept = df.filter(F.col(reason).isNull()).drop(reason)
    rejected = df.filter(F.col(reason).isNotNull())
    return kept, rejected


@dataclass(frozen=True)
class FunnelStep:
    """Counts of one step of one stage."""

    step: str
    rows_in: int
    rows_out: int

    @property
    def rows_rejected(self) -> int:
        """Rows this step dropped."""
        return self.rows_in - self.rows_out


@dataclass(frozen=True)
class Models:
    """What a stage that runs models used, stored beside its funnel rows (``gold.funnel``'s identity columns)."""

    model_id: str | None = None
    captioner: str | None = None
    llm: str | None = None
    prompt_version: str | None = None


def write_funnel(lakehouse: Lakehouse, stage: str, steps: Sequence[FunnelStep], models: Models = Models()) -> None:
    """Replace the funnel rows of ``stage`` (of these ``models``) with ``steps`` in one atomic commit; rows equal to
    those stored already are not written again (a rerun with nothing new adds no version)."""
    spark: SparkSession = lakehouse.spark
    identity = {"stage": stage, **dataclasses.asdict(models)}
    assert tuple(identity) == FUNNEL_IDENTITY
    rows = [(*identity.values(), i, s.step, s.rows_in, s.rows_out, s.rows_rejected) for i, s in enumerate(steps)]
    if lakehouse.exists(FUNNEL):
        stored = lakehouse.read(FUNNEL)
        for column, value in identity.items():
            stored = stored.where(F.col(column).isNull() if value is None else F.col(column) == value)
        if sorted(tuple(r) for r in stored.collect()) == sorted(rows):
            return
    df = spark.createDataFrame(rows, FUNNEL.schema)
    lakehouse.replace_where(FUNNEL, df, identity)


def format_funnel(steps: Sequence[FunnelStep], title: str) -> str:
    """The funnel as a small text table, like the paper's Figure 2."""
    lines = [title, f"{'step':<32}{'in':>14}{'out':>14}{'dropped':>14}"]
    lines += [f"{s.step:<32}{s.rows_in:>14,}{s.rows_out:>14,}{s.rows_rejected:>14,}" for s in steps]
    return "\n".join(lines)
