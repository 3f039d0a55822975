"""Embed stage in Spark with the tiny random-weight model (its vectors are meaningless as embeddings)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from realsyn.config import ConfigError
from realsyn.config_sections import Config, EmbedConfig, StorageConfig
from realsyn.contracts import (
    FUNNEL,
    SILVER_IMAGE_EMBEDDING_REJECTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_SENTENCE_EMBEDDING_REJECTS,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCES,
)
from realsyn.stages.embed import embed_images, embed_sentences, resolve_model, run_embed
from realsyn.tables import Lakehouse
from tests.support.tables import rows_frame
from udfs import clip, decode

IMAGES_SCHEMA = T.StructType([T.StructField("image_id", T.StringType()), T.StructField("content", T.BinaryType())])
SENTENCES_SCHEMA = T.StructType([T.StructField("sentence_id", T.StringType()), T.StructField("text", T.StringType())])
CFG = EmbedConfig(model="tiny-random", device="cpu", image_batch_size=4, text_batch_size=4, decode_threads=2)


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    """A random RGB JPEG of ``size``."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


GOOD = {f"img{i}": jpeg(i, (24 + 5 * i, 40 - 2 * i)) for i in range(7)}
BAD = {"junk": b"\xff\xd8\xff garbage", "empty": b"", "truncated": jpeg(50, (64, 64))[:150]}
TEXTS = {f"s{i}": f"sentence number {i} about a dog and a cat" for i in range(6)}
TEXTS |= {"long": "word " * 200, "blank": "   "}


def expected_vectors(spec: clip.ModelSpec, images: dict[str, bytes], texts: dict[str, str]) -> dict[str, np.ndarray]:
    """Vectors from the model called directly (no Spark), one batch each."""
    enc = clip.load_encoder(spec, "cpu")
    out: dict[str, np.ndarray] = {}
    pixels = np.stack([enc.preprocess(b).numpy() for b in images.values()])
    import torch

    out.update(zip(images, enc.encode_images(torch.from_numpy(pixels)), strict=True))
    out.update(zip(texts, enc.encode_texts(enc.tokenize(list(texts.values()))), strict=True))
    return out


@pytest.fixture(scope="module")
def spec() -> clip.ModelSpec:
    """The tiny random model of conf/models.yaml."""
    return resolve_model(CFG)


@pytest.fixture(scope="module")
def expected(spec: clip.ModelSpec) -> dict[str, np.ndarray]:
    """Direct-model vectors of every good image and non-blank text."""
    return expected_vectors(spec, GOOD, {k: v for k, v in TEXTS.items() if k != "blank"})


def images_df(spark: SparkSession, items: dict[str, bytes], partitions: int = 2) -> DataFrame:
    """An (image_id, content) DataFrame."""
    return spark.createDataFrame(list(items.items()), IMAGES_SCHEMA).repartition(partitions)


def sentences_df(spark: SparkSession, items: dict[str, str], partitions: int = 2) -> DataFrame:
    """A (sentence_id, text) DataFrame."""
    return spark.createDataFrame(list(items.items()), SENTENCES_SCHEMA).repartition(partitions)


def check_vectors(rows: dict[str, list[float]], expected: dict[str, np.ndarray]) -> None:
    """Same ids, same vectors within float tolerance."""
    assert sorted(rows) == sorted(expected)
    for key, vector in rows.items():
        np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), expected[key], atol=1e-5)


@pytest.mark.parametrize(("partitions", "batch", "arrow_batch"), [(1, 16, 10000), (3, 2, 3)])
def test_udf_output_equals_the_model_whatever_partitions_and_batches(
    spark: SparkSession,
    spec: clip.ModelSpec,
    expected: dict[str, np.ndarray],
    partitions: int,
    batch: int,
    arrow_batch: int,
) -> None:
    cfg = CFG.model_copy(update={"image_batch_size": batch, "text_batch_size": batch})
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_batch))
    try:
        images = embed_images(images_df(spark, GOOD | BAD, partitions), cfg, spec).collect()
        texts = embed_sentences(sentences_df(spark, TEXTS, partitions), cfg, spec).collect()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    rows = images + texts
    check_vectors({r[0]: r["embedding"] for r in rows if r["reason"] is None}, expected)
    assert {r[0]: r["reason"] for r in rows if r["reason"] is not None} == {
        "junk": decode.REASON_NOT_AN_IMAGE,
        "empty": decode.REASON_EMPTY_IMAGE,
        "truncated": decode.REASON_UNDECODABLE,
        "blank": clip.REASON_EMPTY_TEXT,
    }
    assert {r["model_id"] for r in rows} == {"tiny-random"}


def test_udf_with_tensor_decoding_keeps_ids_and_reasons(
    spark: SparkSession, spec: clip.ModelSpec, expected: dict[str, np.ndarray]
) -> None:
    # image_decode "torch" on a CPU: torchvision's JPEG decoder and the tensor resize, inside the Spark UDF
    cfg = CFG.model_copy(update={"image_decode": "torch"})
    rows = embed_images(images_df(spark, GOOD | BAD), cfg, spec).collect()
    vectors = {r[0]: np.asarray(r["embedding"], np.float32) for r in rows if r["reason"] is None}
    assert sorted(vectors) == sorted(GOOD)
    for key, vector in vectors.items():  # resized by torchvision's kernels: close to Pillow's, not equal
        assert float(vector @ expected[key]) > 0.999
    assert any(np.abs(vector - expected[key]).max() > 1e-5 for key, vector in vectors.items())  # the tensor way ran
    assert {r[0]: r["reason"] for r in rows if r["reason"] is not None} == {
        "junk": decode.REASON_NOT_AN_IMAGE,
        "empty": decode.REASON_EMPTY_IMAGE,
        "truncated": decode.REASON_UNDECODABLE,
    }


def _write_inputs(lakehouse: Lakehouse, images: dict[str, bytes], texts: dict[str, str]) -> None:
    spark = lakehouse.spark
    image_rows = [{"image_id": k, "content": v} for k, v in images.items()]
    lakehouse.overwrite(SILVER_IMAGES, rows_frame(spark, SILVER_IMAGES, image_rows))
    sentence_rows = [{"sentence_id": k, "text": v} for k, v in texts.items()]
    lakehouse.overwrite(SILVER_SENTENCES, rows_frame(spark, SILVER_SENTENCES, sentence_rows))


def _table(lakehouse: Lakehouse, name: str) -> list[tuple[object, ...]]:
    return sorted(tuple(r) for r in lakehouse.read(name).drop("embedding").collect())


def test_run_embed_writes_tables_rejects_and_reruns_incrementally(
    lakehouse: Lakehouse, storage: StorageConfig, expected: dict[str, np.ndarray]
) -> None:
    first = dict(list(GOOD.items())[:5]) | {"junk": BAD["junk"]}
    _write_inputs(lakehouse, first, TEXTS)
    cfg = Config(storage=storage, embed=CFG)

    summary = run_embed(lakehouse, cfg)
    assert summary.images is not None and summary.sentences is not None
    assert (summary.images.computed, summary.images.embedded, summary.images.rejected) == (6, 5, 1)
    assert (summary.sentences.computed, summary.sentences.embedded, summary.sentences.rejected) == (8, 7, 1)
    images = {r["image_id"]: r["embedding"] for r in lakehouse.read(SILVER_IMAGE_EMBEDDINGS).collect()}
    sentences = {r["sentence_id"]: r["embedding"] for r in lakehouse.read(SILVER_SENTENCE_EMBEDDINGS).collect()}
    check_vectors(images | sentences, {k: v for k, v in expected.items() if k in first or k in TEXTS})
    [(image_id, model_id, reason, detail)] = _table(lakehouse, SILVER_IMAGE_EMBEDDING_REJECTS)
    assert (image_id, model_id, reason) == ("junk", "tiny-random", decode.REASON_NOT_AN_IMAGE)
    assert detail == "not a recognised image format"
    assert _table(lakehouse, SILVER_SENTENCE_EMBEDDING_REJECTS) == [
        ("blank", "tiny-random", clip.REASON_EMPTY_TEXT, "")
    ]
    funnel = sorted(tuple(r) for r in lakehouse.read(FUNNEL).collect())
    assert funnel == [
        ("embed", "tiny-random", None, None, None, 0, "images", 6, 5, 1),
        ("embed", "tiny-random", None, None, None, 1, "sentences", 8, 7, 1),
    ]
    versions = {
        name: lakehouse.delta(name).history(1).collect()[0]["version"]
        for name in (SILVER_IMAGE_EMBEDDINGS, SILVER_SENTENCE_EMBEDDINGS)
    }

    # Rerun: nothing new is computed and the embedding tables get no new commit.
    again = run_embed(lakehouse, cfg)
    assert again.images is not None and again.sentences is not None
    assert (again.images.computed, again.sentences.computed) == (0, 0)
    for name, version in versions.items():
        assert lakehouse.delta(name).history(1).collect()[0]["version"] == version

    # New images arrive: only they are computed.
    _write_inputs(lakehouse, first | {"img5": GOOD["img5"], "img6": GOOD["img6"]}, TEXTS)
    third = run_embed(lakehouse, cfg.model_copy(update={"embed": CFG.model_copy(update={"sentences": False})}))
    assert third.images is not None and third.sentences is None
    assert (third.images.computed, third.images.embedded, third.images.rejected) == (2, 7, 1)
    images = {r["image_id"]: r["embedding"] for r in lakehouse.read(SILVER_IMAGE_EMBEDDINGS).collect()}
    check_vectors(images, {k: v for k, v in expected.items() if k in GOOD})

    # Readable by Spark SQL and by the deltalake package; row groups bounded by the table's parquet.block.size.
    from deltalake import DeltaTable

    path = lakehouse.location(SILVER_IMAGE_EMBEDDINGS)
    dims = lakehouse.spark.sql(f"SELECT DISTINCT model_id, size(embedding) FROM delta.`{path}`").collect()
    assert [tuple(r) for r in dims] == [("tiny-random", 32)]
    table = DeltaTable(path)
    assert sorted(table.to_pyarrow_table().column("image_id").to_pylist()) == sorted(GOOD)
    assert table.metadata().configuration["parquet.block.size"] == str(32 << 20)


def test_unknown_model_stops_before_any_work(lakehouse: Lakehouse, storage: StorageConfig) -> None:
    cfg = Config(storage=storage, embed=EmbedConfig(model="no-such-model"))
    with pytest.raises(ConfigError, match=r"embed\.model.*'no-such-model' is not in .*models\.yaml"):
        run_embed(lakehouse, cfg)
    assert not lakehouse.exists(SILVER_IMAGE_EMBEDDINGS)


def test_missing_checkpoint_stops_before_any_work(lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path) -> None:
    registry = tmp_path / "models.yaml"
    missing = tmp_path / "weights" / "eva.pt"
    registry.write_text(
        f"models:\n  mine:\n    family: open_clip\n    architecture: EVA02-L-14\n    pretrained: {missing}\n",
        encoding="utf-8",
    )
    cfg = Config(storage=storage, embed=EmbedConfig(model="mine", registry=str(registry)))
    with pytest.raises(clip.ModelNotAvailable, match=f"model 'mine': checkpoint file not found: {missing}"):
        run_embed(lakehouse, cfg)
    assert not lakehouse.exists(SILVER_IMAGE_EMBEDDINGS)


def test_missing_inputs_are_skipped(lakehouse: Lakehouse, storage: StorageConfig) -> None:
    summary = run_embed(lakehouse, Config(storage=storage, embed=CFG))
    assert (summary.model_id, summary.images, summary.sentences) == ("tiny-random", None, None)


def test_registry_path_is_found_from_another_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_model(CFG).name == "tiny-random"
