"""Deterministic ids: the same input always gets the same id, in Spark and in plain Python.

An id is the first 32 hex digits (128 bits) of a SHA-256; parts are joined with a unit separator and a
missing part is written as NUL, so ("a", None) and ("a",) differ.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import Column
from pyspark.sql import functions as F

ID_HEX_DIGITS = 32
_SEP = "\x1f"
_NULL = "\x00"


def stable_id(*parts: str | None) -> str:
    """Id of a tuple of strings (documents from source + URL, image references from URL, sentences)."""
    joined = _SEP.join(_NULL if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def bytes_id(data: bytes) -> str:
    """Id of content bytes (an image is its bytes: the same picture at two URLs is one image)."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX_DIGITS]


def stable_id_col(*cols: Column | str) -> Column:
    """Spark column equal to :func:`stable_id` of the given string columns."""
    parts = [F.coalesce(F.col(c) if isinstance(c, str) else c, F.lit(_NULL)) for c in cols]
    return F.substring(F.sha2(F.concat_ws(_SEP, *parts), 256), 1, ID_HEX_DIGITS)


def bytes_id_col(col: Column | str) -> Column:
    """Spark column equal to :func:`bytes_id` of a binary column."""
    return F.substring(F.sha2(F.col(col) if isinstance(col, str) else col, 256), 1, ID_HEX_DIGITS)
