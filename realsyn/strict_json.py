"""Strict JSON in Spark: a value as Python's json module reads it, and nothing after it.

Spark's JSON reader allows single quotes by default and stops after the first value of a line, ignoring what
follows; Jackson, under it, stops at strings of 20,000,000 characters, which a ``data:`` URI image can pass. The
options and checks here read JSON strictly, with strings of any length. NaN / Infinity (written by Python's json
module, found in MMC4's matched_sim) are read.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

JSON_OPTIONS = {"allowSingleQuotes": "false", "maxStringLen": str(2**31 - 1)}


def one_json_value(raw: Column, value_type: str) -> Column:
    """Whether ``raw`` is one strict JSON value of ``value_type`` with nothing after it.

    Spark's JSON parsers stop after the first value and ignore what follows. Wrapped in ``[...]``, content after
    the value fails to parse unless it starts with "]" (more values, after ",", make the array longer);
    wrapped in ``{"k": ...}``, it fails unless it starts with "}" or ",". Only a line with nothing after its value
    passes both. A value of type ``struct<>`` is checked without being built (its strings are skipped).
    """
    in_array = F.from_json(F.concat(F.lit("["), raw, F.lit("]")), f"array<{value_type}>", JSON_OPTIONS)
    in_object = F.from_json(
        F.concat(F.lit('{"k":'), raw, F.lit("}")),
        f"struct<k: {value_type}, _corrupt: string>",
        {**JSON_OPTIONS, "columnNameOfCorruptRecord": "_corrupt"},
    )
    return F.coalesce((F.size(in_array) == 1) & in_object["_corrupt"].isNull(), F.lit(False))


def not_a_string(value: Column) -> Column:
    """Whether a variant holds something other than a JSON string or null (an object as a URL)."""
    return ~F.coalesce(F.schema_of_variant(value).isin("STRING", "VOID"), F.lit(True))
