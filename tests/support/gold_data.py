"""Tiny inputs of the balance stage, written as the tables the earlier stages write: rows of their contracts."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from realsyn.config_sections import Config
from realsyn.contracts import (
    BRONZE_IMAGE_REFS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    LEVEL_COARSE,
    LEVEL_LEAF,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCES,
    Table,
)
from realsyn.ids import stable_id
from realsyn.tables import Lakehouse


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


def write_rows(lakehouse: Lakehouse, table: Table, rows: list[tuple]) -> None:
    """One plain Delta write of ``rows`` (tuples of ``table``'s columns) per input table (one commit)."""
    df = lakehouse.spark.createDataFrame(rows, table.schema)
    df.write.format("delta").mode("overwrite").save(lakehouse.location(table))


def write_inputs(
    lakehouse: Lakehouse,
    cfg: Config,
    images: list[Img],
    leaf_parents: dict[int, int],
    leaf_vectors: dict[int, list[float]] | None = None,
    synthetic_texts: bool = True,
) -> None:
    """Write the input tables of the balance stage for ``images`` under ``cfg``'s model and generation key."""
    model = cfg.embed.model
    key = tuple(cfg.generate.key(model).columns().values())
    image_rows, ref_rows, retrieval_rows, syn_rows, rej_rows, cluster_rows, emb_rows = [], [], [], [], [], [], []
    sentences: dict[str, str] = {}
    for img in images:
        content = img.content if img.content is not None else picture(img.seed, img.fmt)
        with Image.open(io.BytesIO(content)) as im:
            width, height = im.size
        url_ids = sorted({stable_id(url) for _, _, url in img.refs})
        doc_ids = sorted({doc for doc, _, _ in img.refs})
        image_rows.append((img.image_id, content, width, height, img.fmt, url_ids, doc_ids))
        ref_rows += [(doc, pos, url, stable_id(url), None, None, None, None) for doc, pos, url in img.refs]
        for rank, text in enumerate(img.texts, start=1):
            sid = stable_id(text)
            sentences[sid] = text
            retrieval_rows.append((img.image_id, model, rank, sid, 1.0 - rank / 10, 0))
        if img.syn is not None:
            # Without retrieved texts now, the synthetic text was written from a text an earlier retrieval found.
            first = img.texts[0] if img.texts else "a text retrieval no longer finds"
            made_of = (stable_id(first), first, "a caption", ["tag"])
            syn_rows.append((img.image_id, *key, *made_of, img.syn, 0.55))
            # A text under another prompt version that the stage must ignore.
            syn_rows.append((img.image_id, *key[:3], "other", *made_of, "IGNORED " + img.syn, 0.5))
        if img.syn_reject is not None:
            rej_rows.append((img.image_id, *key, *img.syn_reject))
        if img.leaf is not None:
            cluster_rows.append((img.image_id, model, img.leaf))
        if img.embedding is not None:
            emb_rows.append((img.image_id, model, [float(v) for v in img.embedding]))

    write_rows(lakehouse, SILVER_IMAGES, image_rows)
    write_rows(lakehouse, BRONZE_IMAGE_REFS, ref_rows)
    write_rows(lakehouse, SILVER_SENTENCES, [(sid, text, ["d"], 1) for sid, text in sentences.items()])
    write_rows(lakehouse, SILVER_RETRIEVAL, retrieval_rows)
    if synthetic_texts:
        write_rows(lakehouse, GOLD_SYNTHETIC_TEXTS, syn_rows)
        write_rows(lakehouse, GOLD_SYNTHETIC_TEXT_REJECTS, rej_rows)
    write_rows(lakehouse, SILVER_IMAGE_CLUSTERS, cluster_rows)
    dim = len(next(iter(leaf_vectors.values()))) if leaf_vectors else 2
    coarse = sorted(set(leaf_parents.values()))
    centroid_rows = [(model, LEVEL_COARSE, c, None, [0.0] * dim, 0) for c in coarse]
    centroid_rows += [
        (model, LEVEL_LEAF, leaf, parent, (leaf_vectors or {}).get(leaf, [0.0] * dim), 0)
        for leaf, parent in sorted(leaf_parents.items())
    ]
    write_rows(lakehouse, SILVER_IMAGE_CENTROIDS, centroid_rows)
    write_rows(lakehouse, SILVER_IMAGE_EMBEDDINGS, emb_rows)
