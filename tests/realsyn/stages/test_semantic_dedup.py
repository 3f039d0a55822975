"""The semantic_dedup stage on silver tables with planted embeddings: who stays, who goes, and reruns."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from realsyn.config import ConfigError
from realsyn.config_sections import Config
from realsyn.contracts import (
    FUNNEL,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
)
from realsyn.semdedup import ImplausibleDedupError
from realsyn.stages.semantic_dedup import run_semantic_dedup
from realsyn.tables import Lakehouse
from tests.support.tables import rows_frame

# Four images: b and c nearly parallel (cosine ~0.99995), a orthogonal to both, d without an embedding. c has the
# larger resolution, so it leads the group and takes over b's URLs and documents.
IMAGE_ROWS = [  # image_id, width, height, url_ids, doc_ids
    ("a", 300, 300, ["ua"], ["d1"]),
    ("b", 512, 512, ["ub"], ["d2"]),
    ("c", 640, 480, ["uc"], ["d1", "d3"]),
    ("d", 200, 200, ["ud"], ["d4"]),
]
IMAGES = [
    {"image_id": i, "content": i.encode(), "width": w, "height": h, "format": "JPEG", "url_ids": u, "doc_ids": d}
    for i, w, h, u, d in IMAGE_ROWS
]
IMAGE_VECTORS = [
    ("a", "m", [0.0, 0.0, 1.0]),
    ("b", "m", [1.0, 0.0, 0.0]),
    ("c", "m", [0.99995, 0.01, 0.0]),
]
# Sentences: "cat" and "kitten" at cosine 0.995; "cat" occurs more often and leads; "beach" has no embedding.
SENTENCES = [
    {"sentence_id": "cat", "text": "A cat sleeps.", "doc_ids": ["d1", "d2"], "n_occurrences": 2},
    {"sentence_id": "kitten", "text": "A kitten naps.", "doc_ids": ["d2", "d5"], "n_occurrences": 1},
    {"sentence_id": "market", "text": "Markets fell.", "doc_ids": ["d1"], "n_occurrences": 1},
    {"sentence_id": "beach", "text": "Kids at the beach.", "doc_ids": ["d3"], "n_occurrences": 1},
]
B = 1 / (1 + 0.1**2) ** 0.5
SENTENCE_VECTORS = [
    ("cat", "m", [1.0, 0.0, 0.0, 0.0]),
    ("kitten", "m", [B, 0.1 * B, 0.0, 0.0]),
    ("market", "m", [0.0, 0.0, 1.0, 0.0]),
]


def _write(lakehouse: Lakehouse, image_vectors: list[tuple[str, str, list[float]]] = IMAGE_VECTORS) -> None:
    spark: SparkSession = lakehouse.spark
    lakehouse.overwrite(SILVER_IMAGES, rows_frame(spark, SILVER_IMAGES, IMAGES))
    lakehouse.overwrite(SILVER_SENTENCES, rows_frame(spark, SILVER_SENTENCES, SENTENCES))
    lakehouse.overwrite(SILVER_IMAGE_EMBEDDINGS, spark.createDataFrame(image_vectors, SILVER_IMAGE_EMBEDDINGS.schema))
    vectors = spark.createDataFrame(SENTENCE_VECTORS, SILVER_SENTENCE_EMBEDDINGS.schema)
    lakehouse.overwrite(SILVER_SENTENCE_EMBEDDINGS, vectors)


def _config(lakehouse: Lakehouse, **sides: dict[str, object]) -> Config:
    return Config.model_validate({"storage": {"root": lakehouse.storage.root}, "semantic_dedup": sides})


def _state(lakehouse: Lakehouse) -> dict[str, list[tuple[object, ...]]]:
    tables = (SILVER_IMAGES, SILVER_IMAGE_REJECTS, SILVER_SENTENCES, SILVER_SENTENCE_REJECTS, FUNNEL)
    return {t.name: sorted(tuple(r) for r in lakehouse.read(t).collect()) for t in tables if lakehouse.exists(t)}


def test_duplicates_leave_for_the_rejects_and_their_representative_takes_over(lakehouse: Lakehouse) -> None:
    _write(lakehouse)
    summary = run_semantic_dedup(lakehouse, _config(lakehouse))

    images = {r["image_id"]: (r["url_ids"], r["doc_ids"]) for r in lakehouse.read(SILVER_IMAGES).collect()}
    assert images == {"a": (["ua"], ["d1"]), "c": (["ub", "uc"], ["d1", "d2", "d3"]), "d": (["ud"], ["d4"])}
    rejects = [
        (r["reject_id"], r["step"], r["reason"], r["image_id"], r["url_ids"], r["width"], r["duplicate_of"])
        for r in lakehouse.read(SILVER_IMAGE_REJECTS).collect()
    ]
    assert rejects == [("b", "semantic_dedup", "semantic_duplicate", "b", ["ub"], 512, "c")]

    sentences = {
        r["sentence_id"]: (r["doc_ids"], r["n_occurrences"]) for r in lakehouse.read(SILVER_SENTENCES).collect()
    }
    assert sentences == {"cat": (["d1", "d2", "d5"], 3), "market": (["d1"], 1), "beach": (["d3"], 1)}
    rejected = [
        (r["sentence_id"], r["step"], r["duplicate_of"]) for r in lakehouse.read(SILVER_SENTENCE_REJECTS).collect()
    ]
    assert rejected == [("kitten", "semantic_dedup", "cat")]

    funnel = [
        (r["model_id"], r["step"], r["rows_in"], r["rows_out"])
        for r in lakehouse.read(FUNNEL).where(F.col("stage") == "semantic_dedup").orderBy("step_index").collect()
    ]
    assert funnel == [("m", "images", 4, 3), ("m", "sentences", 4, 3)]
    assert "images 4 -> 3 (1 semantic duplicates, model m)" in str(summary)
    # The embeddings stay: a later extraction run brings the duplicates back, and this stage needs their vectors.
    assert lakehouse.read(SILVER_IMAGE_EMBEDDINGS).count() == len(IMAGE_VECTORS)


def test_a_rerun_writes_nothing_and_a_run_killed_between_its_commits_ends_the_same(lakehouse: Lakehouse) -> None:
    _write(lakehouse)
    cfg = _config(lakehouse)
    run_semantic_dedup(lakehouse, cfg)
    done = _state(lakehouse)
    versions = {t.name: lakehouse.version(t) for t in (SILVER_IMAGES, SILVER_IMAGE_REJECTS, FUNNEL)}

    again = run_semantic_dedup(lakehouse, cfg)
    assert {t.name: lakehouse.version(t) for t in (SILVER_IMAGES, SILVER_IMAGE_REJECTS, FUNNEL)} == versions
    assert _state(lakehouse) == done
    assert "done by an earlier run" in str(again)

    # Killed after the rejects were merged, before silver.images was replaced: silver.images is as extraction left
    # it (written here again), the rejects are already in. The rerun ends with the same tables, no duplicate row.
    lakehouse.overwrite(SILVER_IMAGES, rows_frame(lakehouse.spark, SILVER_IMAGES, IMAGES))
    run_semantic_dedup(lakehouse, cfg)
    assert _state(lakehouse) == done


def test_new_embeddings_run_the_side_again(lakehouse: Lakehouse) -> None:
    _write(lakehouse, IMAGE_VECTORS[:2])  # c has no vector yet: nothing to merge
    cfg = _config(lakehouse)
    run_semantic_dedup(lakehouse, cfg)
    assert lakehouse.read(SILVER_IMAGES).count() == 4
    lakehouse.insert_new(
        SILVER_IMAGE_EMBEDDINGS, lakehouse.spark.createDataFrame([IMAGE_VECTORS[2]], SILVER_IMAGE_EMBEDDINGS.schema)
    )
    run_semantic_dedup(lakehouse, cfg)
    assert sorted(r["image_id"] for r in lakehouse.read(SILVER_IMAGES).collect()) == ["a", "c", "d"]


def test_sides_that_cannot_run_say_why_and_write_nothing(lakehouse: Lakehouse) -> None:
    _write(lakehouse)
    before = _state(lakehouse)
    off = run_semantic_dedup(lakehouse, _config(lakehouse, images={"enabled": False}, sentences={"enabled": False}))
    assert "images: not run (semantic_dedup.images.enabled is false)" in str(off)
    random = [("a", "tiny-random", [1.0, 0.0]), ("b", "tiny-random", [1.0, 0.0])]
    lakehouse.overwrite(
        SILVER_IMAGE_EMBEDDINGS, lakehouse.spark.createDataFrame(random, SILVER_IMAGE_EMBEDDINGS.schema)
    )
    refused = run_semantic_dedup(lakehouse, _config(lakehouse, sentences={"enabled": False}))
    assert "images: not run (model 'tiny-random' has random weights" in str(refused)
    assert _state(lakehouse) == before


def test_several_models_and_none_configured_stop_the_run(lakehouse: Lakehouse) -> None:
    _write(lakehouse, [*IMAGE_VECTORS, ("a", "other", [1.0, 0.0, 0.0])])
    before = _state(lakehouse)
    with pytest.raises(ConfigError, match=r"semantic_dedup\.images\.embedding_model: .*several models \(m, other"):
        run_semantic_dedup(lakehouse, _config(lakehouse))
    assert _state(lakehouse) == before
    picked = run_semantic_dedup(lakehouse, _config(lakehouse, images={"embedding_model": "m"}))
    assert "images 4 -> 3" in str(picked)


def test_an_implausible_share_of_duplicates_stops_before_writing(lakehouse: Lakehouse) -> None:
    parallel = [(i["image_id"], "m", [1.0, 0.0, 0.0]) for i in IMAGES]
    _write(lakehouse, parallel)
    before = _state(lakehouse)
    with pytest.raises(ImplausibleDedupError, match=r"semantic_dedup\.images\.max_removed_share=0\.5"):
        run_semantic_dedup(lakehouse, _config(lakehouse))
    assert _state(lakehouse) == before
