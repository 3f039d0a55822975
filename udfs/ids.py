"""Deterministic ids in plain Python: the same input always gets the same id (``realsyn.ids`` adds the Spark
columns that compute the same ids inside a query).

An id is the first 32 hex digits (128 bits) of a SHA-256; parts are joined with a unit separator and a
missing part is written as NUL, so ("a", None) and ("a",) differ.
"""

from __future__ import annotations

import hashlib

ID_HEX_DIGITS = 32
SEP = "\x1f"
NULL = "\x00"


def stable_id(*parts: str | None) -> str:
    """Id of a tuple of strings (documents from source + URL, image references from URL, sentences)."""
    joined = SEP.join(NULL if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def bytes_id(data: bytes) -> str:
    """Id of content bytes (an image is its bytes: the same picture at two URLs is one image)."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX_DIGITS]
