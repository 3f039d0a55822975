"""Deterministic ids: the same input always gets the same id, in Spark and in plain Python.

The Python functions live in ``udfs.ids`` (executors use them without Spark); the columns here compute the same
ids inside a query.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from udfs.ids import ID_HEX_DIGITS, NULL, SEP, bytes_id, stable_id

__all__ = ["ID_HEX_DIGITS", "bytes_id", "bytes_id_col", "stable_id", "stable_id_col"]


def stable_id_col(*cols: Column | str) -> Column:
    """Spark column equal to :func:`stable_id` of the given string columns."""
    parts = [F.coalesce(F.col(c) if isinstance(c, str) else c, F.lit(NULL)) for c in cols]
    return F.substring(F.sha2(F.concat_ws(SEP, *parts), 256), 1, ID_HEX_DIGITS)


def bytes_id_col(col: Column | str) -> Column:
    """Spark column equal to :func:`bytes_id` of a binary column."""
    return F.substring(F.sha2(F.col(col) if isinstance(col, str) else col, 256), 1, ID_HEX_DIGITS)
