"""Embed stage: CLIP vectors of images and sentences, computed once per (id, model) in iterator UDFs.

Reads ``silver.images`` (image_id, content) and ``silver.sentences`` (sentence_id, text), embeds only the ids
that have neither a vector nor a reject for the configured model yet, and MERGEs the results into
``silver.image_embeddings`` / ``silver.sentence_embeddings`` (key: id + model_id; L2-normalised float32
arrays) and the reject tables ``silver.image_embedding_rejects`` / ``silver.sentence_embedding_rejects``
(one reason each). Undecodable or hostile bytes never fail a task.

Each Python worker loads the model once (udfs/clip.py) on the GPU Spark assigned to the task
(``TaskContext.resources()["gpu"]``), or on the CPU with as many threads as the task has cores. Decoding runs
on CPU threads ahead of the model; batch sizes and Arrow batch sizes come from the ``embed`` config section.
With the tiny random-weight models of tests and the demo the vectors are meaningless as embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from realsyn.clip_frames import TextEmbedding, clip_text_frame, embedded_rows, embedding_schema
from realsyn.config import ConfigError, registry_path
from realsyn.config_sections import Config, EmbedConfig
from realsyn.contracts import (
    SILVER_IMAGE_EMBEDDING_REJECTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_SENTENCE_EMBEDDING_REJECTS,
    SILVER_SENTENCE_EMBEDDINGS,
    Table,
)
from realsyn.funnel import REASON, FunnelStep, Models, write_funnel
from realsyn.spark import ARROW_BATCH_CONF, session_conf
from realsyn.tables import Lakehouse
from realsyn.workers import keep_zip_directories, task_device
from udfs.models import ModelSpec, RegistryError, check_local_files, get_spec, load_registry

log = logging.getLogger(__name__)

STAGE = "embed"


def resolve_model(cfg: EmbedConfig) -> ModelSpec:
    """The registry entry named by ``embed.model``.

    Raises ConfigError naming the key and file when the entry is absent, and ModelNotAvailable naming the path
    when a checkpoint file or model directory it points to does not exist.
    """
    path = registry_path(cfg.registry)
    try:
        spec = get_spec(load_registry(path), cfg.model, str(path))
    except RegistryError as e:
        raise ConfigError(f"embed.model / embed.registry: {e}") from None
    check_local_files(spec)
    return spec


def _task_device(cfg: EmbedConfig) -> str:
    """The device of the running task: the GPU Spark assigned to it, else CPU (see udfs.models.pick_device)."""
    return task_device(cfg.device)


def embed_images(df: DataFrame, cfg: EmbedConfig, spec: ModelSpec) -> DataFrame:
    """(image_id, content) -> (image_id, model_id, embedding | null, reason | null, detail)."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.clip import embed_images as embed_batches
        from udfs.clip import get_encoder

        keep_zip_directories()
        encoder = get_encoder(spec, _task_device(cfg), cfg.precision)
        items = ((i, c) for frame in frames for i, c in zip(frame["image_id"], frame["content"], strict=True))
        for batch in embed_batches(
            encoder,
            items,
            cfg.image_batch_size,
            decode_threads=cfg.decode_threads,
            prefetch=cfg.prefetch_batches,
            max_pixels=cfg.max_image_pixels,
            draft=cfg.jpeg_draft,
            decode=cfg.image_decode,
        ):
            yield embedded_rows("image_id", spec.name, batch)

    return df.select("image_id", "content").mapInPandas(run, embedding_schema("image_id"))


def embed_sentences(df: DataFrame, cfg: EmbedConfig, spec: ModelSpec) -> DataFrame:
    """(sentence_id, text) -> (sentence_id, model_id, embedding | null, reason | null, detail)."""
    how = TextEmbedding(spec, cfg.device, "embed.device", cfg.precision, cfg.text_batch_size, cfg.prefetch_batches)
    return clip_text_frame(df, how, "sentence_id", "text")


def not_yet_embedded(df: DataFrame, done: list[DataFrame], key: str, model_id: str) -> DataFrame:
    """Rows of ``df`` whose ``key`` has no vector and no reject for ``model_id`` in any of ``done``."""
    for table in done:
        seen = table.filter(F.col("model_id") == model_id).select(key)
        df = df.join(seen, on=key, how="left_anti")
    return df


@dataclass(frozen=True)
class EmbedCounts:
    """What one side (images or sentences) of one run did."""

    input_table: str
    computed: int
    embedded: int
    rejected: int


@dataclass(frozen=True)
class EmbedSummary:
    """What :func:`run_embed` did; ``None`` for a side that was switched off or whose input does not exist."""

    model_id: str
    images: EmbedCounts | None
    sentences: EmbedCounts | None
    random_init: bool = False  # the model has random weights: its vectors only exercise the code paths
    missing: tuple[str, ...] = ()  # input tables that did not exist yet

    def __str__(self) -> str:
        lines = [f"embed: {table} does not exist yet; nothing embedded from it" for table in self.missing]
        for name, counts in (("images", self.images), ("sentences", self.sentences)):
            if counts is not None:
                lines.append(
                    f"embed [{self.model_id}] {name}: computed {counts.computed:,} this run; "
                    f"{counts.embedded:,} embedded and {counts.rejected:,} rejected in total"
                )
        if self.random_init:
            lines.append(f"embed: model {self.model_id!r} has random weights: its vectors are meaningless as data")
        return "\n".join(lines)


def _embed_side(
    lakehouse: Lakehouse,
    cfg: EmbedConfig,
    spec: ModelSpec,
    *,
    kind: str,
    input_table: str,
    key: str,
    output: Table,
    rejects: Table,
    arrow_batch: int,
) -> EmbedCounts | None:
    if not lakehouse.exists(input_table):
        return None
    block = str(cfg.parquet_block_size_mb << 20)
    properties = {"parquet.block.size": block}
    lakehouse.create_if_absent(output, properties=properties)
    lakehouse.create_if_absent(rejects, properties=properties)
    source = lakehouse.read(input_table)
    todo = not_yet_embedded(source, [lakehouse.read(output), lakehouse.read(rejects)], key, spec.name)
    if cfg.partitions:
        todo = todo.repartition(cfg.partitions)
    stage = embed_images if kind == "images" else embed_sentences
    results = todo.transform(lambda d: stage(d, cfg, spec)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with session_conf(results.sparkSession, ARROW_BATCH_CONF, str(arrow_batch)):
            computed = results.count()
        if computed:
            ok = results.filter(F.col(REASON).isNull()).select(key, "model_id", "embedding")
            bad = results.filter(F.col(REASON).isNotNull()).select(key, "model_id", REASON, "detail")
            n_bad = bad.count()  # on the cached results; an empty MERGE would still add a commit
            if computed > n_bad:
                lakehouse.insert_new(output, ok)
            if n_bad:
                lakehouse.insert_new(rejects, bad)
    finally:
        results.unpersist()
    embedded = lakehouse.read(output).filter(F.col("model_id") == spec.name).count()
    rejected = lakehouse.read(rejects).filter(F.col("model_id") == spec.name).count()
    return EmbedCounts(input_table, computed, embedded, rejected)


def run_embed(lakehouse: Lakehouse, cfg: Config) -> EmbedSummary:
    """Embed every image and sentence not yet embedded with ``embed.model``; return the counts."""
    ecfg = cfg.embed
    spec = resolve_model(ecfg)
    sides = {
        "images": (ecfg.images, ecfg.image_input, "image_id", SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGE_EMBEDDING_REJECTS,
                   ecfg.image_arrow_batch_size),
        "sentences": (ecfg.sentences, ecfg.sentence_input, "sentence_id", SILVER_SENTENCE_EMBEDDINGS,
                      SILVER_SENTENCE_EMBEDDING_REJECTS, ecfg.text_arrow_batch_size),
    }  # fmt: skip
    counts = {
        kind: _embed_side(
            lakehouse, ecfg, spec, kind=kind, input_table=table, key=key, output=out, rejects=rej, arrow_batch=batch
        )
        if on
        else None
        for kind, (on, table, key, out, rej, batch) in sides.items()
    }
    images, sentences = counts["images"], counts["sentences"]
    missing = tuple(
        table
        for on, table, counts in (
            (ecfg.images, ecfg.image_input, images),
            (ecfg.sentences, ecfg.sentence_input, sentences),
        )
        if on and counts is None
    )
    steps = [
        FunnelStep(kind, counts.embedded + counts.rejected, counts.embedded)
        for kind, counts in (("images", images), ("sentences", sentences))
        if counts is not None
    ]
    write_funnel(lakehouse, STAGE, steps, Models(model_id=spec.name))
    return EmbedSummary(spec.name, images, sentences, spec.random_init, missing)
