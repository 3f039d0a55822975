"""The CLIP text tower as a Spark frame, with the tiny random-weight model (its vectors are meaningless as data).

The expected vectors come from the model called directly, without Spark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from realsyn.clip_frames import TextEmbedding, clip_text_frame, embedding_schema
from udfs import clip
from udfs.models import get_spec, load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "conf" / "models.yaml"
# key, text, source, frequency: two blank texts and a null one among them.
ROWS = [
    ("a", "a photo of a dog.", "base", 3),
    ("b", "   ", "mined", 1),
    ("c", "a red tractor by the river.", "mined", 2),
    ("d", None, "base", 0),
    ("e", "a festival crowd.", "base", 7),
    ("f", "", "mined", 5),
    ("g", "word " * 200, "base", 4),
]


@pytest.fixture(scope="module")
def spec() -> clip.ModelSpec:
    """The tiny random CLIP model of conf/models.yaml."""
    return get_spec(load_registry(REGISTRY), "tiny-random")


@pytest.fixture(scope="module")
def expected(spec: clip.ModelSpec) -> dict[str, np.ndarray]:
    """Direct-model vectors of every non-blank text, one batch."""
    enc = clip.load_encoder(spec, "cpu")
    texts = {k: t for k, t, *_ in ROWS if t is not None and t.strip()}
    return dict(zip(texts, enc.encode_texts(enc.tokenize(list(texts.values()))), strict=True))


@pytest.mark.parametrize("sizes", [(1, 16, 10000), (2, 2, 3)], ids=["one-batch", "batches-across-arrow-batches"])
def test_text_frame_embeds_each_text_keeps_its_columns_and_rejects_blank_ones(
    spark: SparkSession, spec: clip.ModelSpec, expected: dict[str, np.ndarray], sizes: tuple[int, int, int]
) -> None:
    partitions, batch, arrow_batch = sizes
    df = spark.createDataFrame(ROWS, "key string, text string, source string, frequency long").repartition(partitions)
    how = TextEmbedding(spec, "cpu", "test.device", "auto", batch, prefetch=1)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch))
    try:
        frame = clip_text_frame(df, how, "key", "text", keep=("source", "frequency"))
        rows = frame.collect()
        kept = clip_text_frame(df, how, "key", "text", keep=("frequency", "text"), rejects=False).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")

    assert frame.columns == ["key", "model_id", "embedding", "reason", "detail", "source", "frequency"]
    by_key = {r["key"]: r for r in rows}
    assert sorted(by_key) == sorted(k for k, *_ in ROWS)
    for key, _, source, frequency in ROWS:
        row = by_key[key]
        assert (row["model_id"], row["source"], row["frequency"]) == ("tiny-random", source, frequency)
        if key in expected:
            assert (row["reason"], row["detail"]) == (None, None)
            np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected[key], atol=1e-5)
        else:
            assert (row["embedding"], row["reason"], row["detail"]) == (None, clip.REASON_EMPTY_TEXT, "")

    texts = {k: t for k, t, *_ in ROWS}
    frequencies = {k: f for k, _, _, f in ROWS}
    assert sorted(r["key"] for r in kept) == sorted(expected)
    for row in kept:
        assert (row["reason"], row["frequency"], row["text"]) == (None, frequencies[row["key"]], texts[row["key"]])
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected[row["key"]], atol=1e-5)


def test_embedding_schema_sets_a_vector_or_a_reason_then_the_kept_columns() -> None:
    extra = T.StructField("source", T.StringType())
    schema = embedding_schema("sentence_id", [extra])
    assert schema.names == ["sentence_id", "model_id", "embedding", "reason", "detail", "source"]
    assert not schema["sentence_id"].nullable and schema["embedding"].nullable
    assert schema["embedding"].dataType == T.ArrayType(T.FloatType(), False)
