"""Tiny inputs of the balance stage, written as the tables the earlier stages write (schemas as theirs).

``gold.synthetic_texts`` / ``gold.synthetic_text_rejects`` follow the agreed contract of the generate stage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from realsyn.clustering import CENTROIDS_SCHEMA, LEVEL_COARSE, LEVEL_LEAF
from realsyn.config import Config
from realsyn.ids import stable_id
from realsyn.retrieval import RETRIEVAL_SCHEMA
from realsyn.tables import (
    BRONZE_IMAGE_REFS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCES,
    Lakehouse,
)

SYNTHETIC_TEXTS_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType(), False),
        T.StructField("model_id", T.StringType(), False),
        T.StructField("captioner_id", T.StringType(), False),
        T.StructField("llm_id", T.StringType(), False),
        T.StructField("prompt_version", T.StringType(), False),
        T.StructField("retrieved_sentence_id", T.StringType(), True),
        T.StructField("retrieved_text", T.StringType(), True),
        T.StructField("caption", T.StringType(), True),
        T.StructField("tags", T.ArrayType(T.StringType()), True),
        T.StructField("syn_text", T.StringType(), False),
        T.StructField("cosine", T.FloatType(), True),
    ]
)
SYNTHETIC_REJECTS_SCHEMA = T.StructType(
    [
        *SYNTHETIC_TEXTS_SCHEMA.fields[:5],
        T.StructField("reason", T.StringType(), False),
        T.StructField("detail", T.StringType(), True),
    ]
)
IMAGES_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType(), False),
        T.StructField("content", T.BinaryType(), True),
        T.StructField("width", T.IntegerType(), True),
        T.StructField("height", T.IntegerType(), True),
        T.StructField("format", T.StringType(), True),
        T.StructField("url_ids", T.ArrayType(T.StringType()), True),
        T.StructField("doc_ids", T.ArrayType(T.StringType()), True),
    ]
)
REFS_SCHEMA = T.StructType(
    [
        T.StructField("doc_id", T.StringType(), False),
        T.StructField("position", T.IntegerType(), False),
        T.StructField("url", T.StringType(), True),
        T.StructField("url_id", T.StringType(), True),
    ]
)


def picture(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (32, 24)) -> bytes:
    """A small noise picture encoded as ``fmt`` (distinct bytes per seed)."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


@dataclass
class Img:
    """One image of the tiny corpus and what the earlier stages wrote about it."""

    image_id: str
    refs: list[tuple[str, int, str]]  # (doc_id, position, url)
    leaf: int | None
    texts: list[str] = field(default_factory=list)  # retrieved sentences by rank
    syn: str | None = None
    syn_reject: tuple[str, str] | None = None
    embedding: list[float] | None = None
    fmt: str = "JPEG"
    seed: int = 0
    content: bytes | None = None


def _write(lakehouse: Lakehouse, name: str, df: DataFrame) -> None:
    """One plain Delta write per input table (one commit; the tests only need the rows)."""
    df.write.format("delta").mode("overwrite").save(lakehouse.location(name))


def write_inputs(
    lakehouse: Lakehouse,
    cfg: Config,
    images: list[Img],
    leaf_parents: dict[int, int],
    leaf_vectors: dict[int, list[float]] | None = None,
    synthetic_texts: bool = True,
) -> None:
    """Write the input tables of the balance stage for ``images`` under ``cfg``'s model and generation key."""
    spark = lakehouse.spark
    model = cfg.embed.model
    key = (model, cfg.generate.captioner, cfg.generate.llm, cfg.generate.prompt_version)
    image_rows, ref_rows, retrieval_rows, syn_rows, rej_rows, cluster_rows, emb_rows = [], [], [], [], [], [], []
    sentences: dict[str, str] = {}
    for img in images:
        content = img.content if img.content is not None else picture(img.seed, img.fmt)
        with Image.open(io.BytesIO(content)) as im:
            width, height = im.size
        url_ids = sorted({stable_id(url) for _, _, url in img.refs})
        doc_ids = sorted({doc for doc, _, _ in img.refs})
        image_rows.append((img.image_id, content, width, height, img.fmt, url_ids, doc_ids))
        ref_rows += [(doc, pos, url, stable_id(url)) for doc, pos, url in img.refs]
        for rank, text in enumerate(img.texts, start=1):
            sid = stable_id(text)
            sentences[sid] = text
            retrieval_rows.append((img.image_id, model, rank, sid, 1.0 - rank / 10, 0))
        if img.syn is not None:
            first = img.texts[0] if img.texts else None
            syn_rows.append(
                (img.image_id, *key, stable_id(first) if first else None, first, "a caption", ["tag"], img.syn, 0.55)
            )
            # A text under another prompt version that the stage must ignore.
            syn_rows.append((img.image_id, *key[:3], "other", None, None, None, None, "IGNORED " + img.syn, 0.5))
        if img.syn_reject is not None:
            rej_rows.append((img.image_id, *key, *img.syn_reject))
        if img.leaf is not None:
            cluster_rows.append((img.image_id, model, img.leaf))
        if img.embedding is not None:
            emb_rows.append((img.image_id, model, [float(v) for v in img.embedding]))

    _write(lakehouse, SILVER_IMAGES, spark.createDataFrame(image_rows, IMAGES_SCHEMA))
    _write(lakehouse, BRONZE_IMAGE_REFS, spark.createDataFrame(ref_rows, REFS_SCHEMA))
    _write(
        lakehouse,
        SILVER_SENTENCES,
        spark.createDataFrame(
            [(sid, text, ["d"], 1) for sid, text in sentences.items()],
            "sentence_id string, text string, doc_ids array<string>, n_occurrences long",
        ),
    )
    _write(lakehouse, SILVER_RETRIEVAL, spark.createDataFrame(retrieval_rows, RETRIEVAL_SCHEMA))
    if synthetic_texts:
        _write(lakehouse, GOLD_SYNTHETIC_TEXTS, spark.createDataFrame(syn_rows, SYNTHETIC_TEXTS_SCHEMA))
        _write(lakehouse, GOLD_SYNTHETIC_TEXT_REJECTS, spark.createDataFrame(rej_rows, SYNTHETIC_REJECTS_SCHEMA))
    _write(
        lakehouse,
        SILVER_IMAGE_CLUSTERS,
        spark.createDataFrame(cluster_rows, "image_id string, model_id string, leaf_id long"),
    )
    dim = len(next(iter(leaf_vectors.values()))) if leaf_vectors else 2
    coarse = sorted(set(leaf_parents.values()))
    centroid_rows = [(model, LEVEL_COARSE, c, None, [0.0] * dim, 0) for c in coarse]
    centroid_rows += [
        (model, LEVEL_LEAF, leaf, parent, (leaf_vectors or {}).get(leaf, [0.0] * dim), 0)
        for leaf, parent in sorted(leaf_parents.items())
    ]
    _write(lakehouse, SILVER_IMAGE_CENTROIDS, spark.createDataFrame(centroid_rows, CENTROIDS_SCHEMA))
    _write(
        lakehouse,
        SILVER_IMAGE_EMBEDDINGS,
        spark.createDataFrame(emb_rows, "image_id string, model_id string, embedding array<float>"),
    )
