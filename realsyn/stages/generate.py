"""Generate stage (paper section 3.3): captioner + tagger + LLM rewrite, then the image / text similarity filter.

For every image of ``silver.images`` not yet done under the key (image_id, model_id, captioner_id, llm_id,
prompt_version), where model_id is ``embed.model`` (the CLIP model of the embeddings and of ``silver.retrieval``):

1. the top retrieved text (rank 1 of ``silver.retrieval``, its text from ``silver.sentences``); none:
   reject ``no_retrieved_text``;
2. a caption (``gold.captions``, key image_id + captioner_id, computed once per captioner): the image decoded by
   the embed stage's decoder and captioned greedily; an undecodable image or an empty caption is kept there with
   its reason and becomes a reject here;
3. tags (``gold.image_tags``, key image_id + model_id): CLIP zero-shot over ``silver.tags`` (the base list and
   tags mined from ``silver.sentences``, each embedded once by the CLIP text tower) read off the stored image
   embedding; an image with no tag above the threshold gets an empty list and the prompt says ``none``;
4. the LLM rewrite of retrieved text, caption and tags under the configured prompt (rejects: invalid UTF-8,
   empty, prompt echo only, truncated, over-long);
5. the synthetic text embedded by the CLIP model (the embed stage's text path); pairs whose cosine with the
   image lies in the model's ``similarity_band`` go to ``gold.synthetic_texts``, the others to
   ``gold.synthetic_text_rejects`` as ``too_similar_ocr_like`` / ``too_dissimilar``.

Every write is a MERGE on its key, so a killed run resumes where it stopped and a rerun computes nothing; a new
prompt version, captioner or LLM computes everything again under its own key and leaves the old rows alone
(captions and tags are reused where their own key is unchanged). Models load once per Python worker on the GPU
Spark assigned to the task. With the tiny random-weight models of tests and the demo, every caption, tag and text
is meaningless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from realsyn.config import ConfigError, registry_path
from realsyn.config_sections import Config, GenerateConfig
from realsyn.contracts import (
    GOLD_CAPTIONS,
    GOLD_IMAGE_TAGS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCES,
    SILVER_TAGS,
)
from realsyn.funnel import REASON, FunnelStep, Models, write_funnel
from realsyn.spark import ARROW_BATCH_CONF
from realsyn.synthetic_frames import caption_frame, embed_tag_frame, rewrite_frame, score_frame, tag_frame
from realsyn.tables import Lakehouse
from realsyn.tag_vocabulary import tag_vocabulary
from udfs.models import ModelSpec, RegistryError, check_local_files, get_spec, load_registry

log = logging.getLogger(__name__)


REASON_NO_RETRIEVED_TEXT = "no_retrieved_text"
# Reasons by the step that gives them (the funnel's steps); the caption step passes on the decoder's reasons.
LLM_REASONS = ("invalid_utf8", "empty_output", "prompt_echo", "truncated", "over_long")
BAND_REASONS = ("too_similar_ocr_like", "too_dissimilar", "text_not_embeddable")


@dataclass(frozen=True)
class GenerateModels:
    """The three registry entries of a run and the similarity band it keeps."""

    clip: ModelSpec
    captioner: ModelSpec
    llm: ModelSpec
    band: tuple[float, float]


def resolve_models(cfg: Config) -> GenerateModels:
    """The registry entries named by ``embed.model``, ``generate.captioner`` and ``generate.llm``, and the band.

    Raises ConfigError naming the key and registry file when an entry is absent or of the wrong kind, or when the
    CLIP entry has no ``similarity_band`` and ``generate.similarity_band`` is not set; ModelNotAvailable when a
    local path an entry names does not exist.
    """
    path = registry_path(cfg.embed.registry)
    try:
        registry = load_registry(path)
    except RegistryError as e:
        raise ConfigError(f"embed.registry: {e}") from None
    specs: list[ModelSpec] = []
    for key, name, kind in (
        ("embed.model", cfg.embed.model, "clip"),
        ("generate.captioner", cfg.generate.captioner, "captioner"),
        ("generate.llm", cfg.generate.llm, "llm"),
    ):
        try:
            specs.append(get_spec(registry, name, str(path), kind=kind))  # type: ignore[arg-type]
        except RegistryError as e:
            raise ConfigError(f"{key}: {e}") from None
    for spec in specs:
        check_local_files(spec)
    clip, captioner, llm = specs
    band = cfg.generate.similarity_band or clip.similarity_band
    if band is None:
        raise ConfigError(
            f"generate.similarity_band: model {clip.name!r} of {path} has no similarity_band; set one there or in "
            "generate.similarity_band (the paper's [0.51, 0.61] holds for EVA02-CLIP only)"
        )
    return GenerateModels(clip, captioner, llm, (float(band[0]), float(band[1])))


def ensure_tags(lakehouse: Lakehouse, cfg: Config, spec: ModelSpec) -> tuple[int, bool]:
    """Build silver.tags for the CLIP model unless it has rows (or ``generate.tags.rebuild``); (tags, built)."""
    gcfg = cfg.generate
    lakehouse.create_if_absent(SILVER_TAGS)
    present = lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == spec.name).limit(1).count()
    if present and not gcfg.tags.rebuild:
        return lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == spec.name).count(), False
    vocab = tag_vocabulary(lakehouse.read(SILVER_SENTENCES), gcfg)
    template = gcfg.tags.prompt_template
    prompts = vocab.withColumn("prompt", F.replace(F.lit(template), F.lit("{tag}"), F.col("tag"))).repartition(
        max(1, lakehouse.spark.sparkContext.defaultParallelism)
    )
    rows = embed_tag_frame(prompts, gcfg, cfg.embed.precision, cfg.embed.text_batch_size, spec)
    lakehouse.replace_partition(SILVER_TAGS, rows, "model_id", spec.name)
    return lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == spec.name).count(), True


# ------------------------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`run_generate` did, under one key (model, captioner, LLM, prompt version)."""

    model_id: str
    captioner_id: str
    llm_id: str
    prompt_version: str
    computed: int
    captioned: int
    tags: int
    kept: int
    rejected: dict[str, int]
    tokens: int
    random_weights: bool

    def __str__(self) -> str:
        reasons = ", ".join(f"{n:,} {r}" for r, n in sorted(self.rejected.items())) or "none"
        text = (
            f"generate [{self.model_id} | {self.captioner_id} | {self.llm_id} | prompt {self.prompt_version}]: "
            f"{self.computed:,} images this run ({self.captioned:,} captioned, {self.tokens:,} tokens generated); "
            f"{self.kept:,} synthetic texts kept in total, rejected: {reasons}; tag vocabulary {self.tags:,}"
        )
        if self.random_weights:
            text += ". Models with random weights: captions, tags and texts are meaningless"
        return text


def _key_columns(models: GenerateModels, gcfg: GenerateConfig) -> list[Column]:
    return [
        F.lit(models.clip.name).alias("model_id"),
        F.lit(models.captioner.name).alias("captioner_id"),
        F.lit(models.llm.name).alias("llm_id"),
        F.lit(gcfg.prompt_version).alias("prompt_version"),
    ]


def _of_key(df: DataFrame, models: GenerateModels, gcfg: GenerateConfig) -> DataFrame:
    return df.filter(
        (F.col("model_id") == models.clip.name)
        & (F.col("captioner_id") == models.captioner.name)
        & (F.col("llm_id") == models.llm.name)
        & (F.col("prompt_version") == gcfg.prompt_version)
    )


def _rejects(df: DataFrame, models: GenerateModels, gcfg: GenerateConfig) -> DataFrame:
    return df.select("image_id", *_key_columns(models, gcfg), F.col(REASON), F.col("detail"))


def _with_arrow_batch(df: DataFrame, rows: int) -> None:
    df.sparkSession.conf.set(ARROW_BATCH_CONF, str(rows))


def run_generate(lakehouse: Lakehouse, cfg: Config) -> GenerateSummary:
    """Write a synthetic text or a reject for every image of silver.images not yet done under the current key."""
    gcfg = cfg.generate
    models = resolve_models(cfg)
    model_id = models.clip.name
    low, high = models.band
    random_weights = any(s.random_init for s in (models.clip, models.captioner, models.llm))
    for table in (GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS, GOLD_CAPTIONS, GOLD_IMAGE_TAGS):
        lakehouse.create_if_absent(table)
    needed = [SILVER_IMAGES, SILVER_IMAGE_EMBEDDINGS, SILVER_RETRIEVAL, SILVER_SENTENCES]
    missing = [n for n in needed if not lakehouse.exists(n)]
    if missing:
        log.warning("generate: %s not there yet; nothing to generate", ", ".join(map(str, missing)))
        return _summary(lakehouse, models, gcfg, 0, 0, 0, 0, random_weights)
    spark = lakehouse.spark
    before = spark.conf.get(ARROW_BATCH_CONF, None)
    try:
        computed, captioned, tokens, n_tags = _generate(lakehouse, cfg, models, low, high)
    finally:
        if before is None:
            spark.conf.unset(ARROW_BATCH_CONF)
        else:
            spark.conf.set(ARROW_BATCH_CONF, before)
    summary = _summary(lakehouse, models, gcfg, computed, captioned, tokens, n_tags, random_weights)
    steps = _funnel(summary)
    used = Models(model_id, models.captioner.name, models.llm.name, gcfg.prompt_version)
    write_funnel(lakehouse, "generate", steps, used)
    return summary


def _generate(
    lakehouse: Lakehouse, cfg: Config, models: GenerateModels, low: float, high: float
) -> tuple[int, int, int, int]:
    gcfg = cfg.generate
    model_id = models.clip.name
    retrieved = (
        lakehouse.read(SILVER_RETRIEVAL)
        .filter((F.col("model_id") == model_id) & (F.col("rank") == 1))
        .select("image_id", F.col("sentence_id").alias("retrieved_sentence_id"))
    )
    texts = lakehouse.read(SILVER_SENTENCES).select(
        F.col("sentence_id").alias("retrieved_sentence_id"), F.col("text").alias("retrieved_text")
    )
    done = (
        _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXTS), models, gcfg)
        .select("image_id")
        .unionByName(_of_key(lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS), models, gcfg).select("image_id"))
    )
    todo = (
        lakehouse.read(SILVER_IMAGES)
        .select("image_id")
        .distinct()
        .join(done, "image_id", "left_anti")
        .join(retrieved, "image_id", "left")
        .join(texts, "retrieved_sentence_id", "left")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        computed = todo.count()
        if computed == 0:
            n_tags = lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == model_id).count()
            return 0, 0, 0, n_tags
        no_text = todo.filter(F.col("retrieved_text").isNull()).select(
            "image_id",
            F.lit(REASON_NO_RETRIEVED_TEXT).alias(REASON),
            F.when(F.col("retrieved_sentence_id").isNull(), F.lit(f"no rank-1 row in {SILVER_RETRIEVAL}"))
            .otherwise(F.concat(F.lit(f"sentence not in {SILVER_SENTENCES}: "), F.col("retrieved_sentence_id")))
            .alias("detail"),
        )
        if no_text.limit(1).count():
            lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(no_text, models, gcfg))
        with_text = todo.filter(F.col("retrieved_text").isNotNull())
        captioned = _caption(lakehouse, cfg, models.captioner, with_text)
        n_tags, _ = ensure_tags(lakehouse, cfg, models.clip)
        _tag(lakehouse, cfg, models.clip, with_text)
        tokens = _rewrite_and_filter(lakehouse, cfg, models, with_text, low, high)
    finally:
        todo.unpersist()
    return computed, captioned, tokens, n_tags


def _caption(lakehouse: Lakehouse, cfg: Config, spec: ModelSpec, images: DataFrame) -> int:
    gcfg = cfg.generate
    have = lakehouse.read(GOLD_CAPTIONS).filter(F.col("captioner_id") == spec.name).select("image_id")
    need = images.select("image_id").join(have, "image_id", "left_anti")
    need = need.join(
        lakehouse.read(SILVER_IMAGES).select("image_id", "content").dropDuplicates(["image_id"]), "image_id"
    )
    if gcfg.partitions:
        need = need.repartition(gcfg.partitions)
    _with_arrow_batch(need, gcfg.arrow_batch_size)
    rows = caption_frame(need, gcfg, spec, cfg.embed.max_image_pixels).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n = rows.count()
        if n:
            lakehouse.insert_new(GOLD_CAPTIONS, rows)
    finally:
        rows.unpersist()
    return n


def _tag_vectors(lakehouse: Lakehouse, model_id: str) -> tuple[list[str], np.ndarray]:
    rows = lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == model_id).select("tag", "embedding").orderBy("tag")
    table = rows.toArrow()
    tags = [str(t) for t in table.column("tag").to_pylist()]
    if not tags:
        return [], np.zeros((0, 0), dtype=np.float32)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return tags, np.asarray(flat, dtype=np.float32).reshape(len(tags), -1)


def _tag(lakehouse: Lakehouse, cfg: Config, spec: ModelSpec, images: DataFrame) -> None:
    have = lakehouse.read(GOLD_IMAGE_TAGS).filter(F.col("model_id") == spec.name).select("image_id")
    need = images.select("image_id").join(have, "image_id", "left_anti")
    embeddings = lakehouse.read(SILVER_IMAGE_EMBEDDINGS).filter(F.col("model_id") == spec.name)
    need = need.join(embeddings.select("image_id", "embedding"), "image_id")
    if not need.limit(1).count():
        return
    tags, vectors = _tag_vectors(lakehouse, spec.name)
    _with_arrow_batch(need, 4096)
    lakehouse.insert_new(GOLD_IMAGE_TAGS, tag_frame(need, cfg.generate, spec.name, tags, vectors))


def _rewrite_and_filter(
    lakehouse: Lakehouse, cfg: Config, models: GenerateModels, images: DataFrame, low: float, high: float
) -> int:
    gcfg = cfg.generate
    captions = lakehouse.read(GOLD_CAPTIONS).filter(F.col("captioner_id") == models.captioner.name)
    image_tags = lakehouse.read(GOLD_IMAGE_TAGS).filter(F.col("model_id") == models.clip.name)
    embeddings = lakehouse.read(SILVER_IMAGE_EMBEDDINGS).filter(F.col("model_id") == models.clip.name)
    joined = images.join(captions.select("image_id", "caption", REASON, "detail"), "image_id", "left")
    no_caption = joined.filter(F.col("caption").isNull()).select(
        "image_id",
        F.coalesce(F.col(REASON), F.lit("empty_caption")).alias(REASON),
        F.coalesce(F.col("detail"), F.lit("")).alias("detail"),
    )
    if no_caption.limit(1).count():
        lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(no_caption, models, gcfg))
    ready = (
        joined.filter(F.col("caption").isNotNull())
        .drop(REASON, "detail")
        .join(image_tags.select("image_id", "tags"), "image_id", "left")
        .withColumn("tags", F.coalesce(F.col("tags"), F.array().cast("array<string>")))
    )
    if gcfg.partitions:
        ready = ready.repartition(gcfg.partitions)
    _with_arrow_batch(ready, gcfg.arrow_batch_size)
    written = rewrite_frame(ready, gcfg, models.llm).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = written.agg(F.count(F.lit(1)).alias("n"), F.sum("n_tokens").alias("tokens")).first()
        if stats is None or not stats["n"]:
            return 0
        tokens = int(stats["tokens"] or 0)
        bad = written.filter(F.col(REASON).isNotNull()).select("image_id", REASON, "detail")
        if bad.limit(1).count():
            lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(bad, models, gcfg))
        good = written.filter(F.col(REASON).isNull()).select("image_id", "syn_text")
        with_vectors = good.join(embeddings.select("image_id", "embedding"), "image_id", "left")
        scored = (
            score_frame(with_vectors, gcfg, cfg.embed.precision, cfg.embed.text_batch_size, models.clip, (low, high))
            .join(good, "image_id")
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        try:
            out = scored.filter(F.col(REASON).isNotNull()).select("image_id", REASON, "detail")
            if out.limit(1).count():
                lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(out, models, gcfg))
            kept = (
                scored.filter(F.col(REASON).isNull())
                .join(
                    ready.select("image_id", "retrieved_sentence_id", "retrieved_text", "caption", "tags"), "image_id"
                )
                .select(
                    "image_id",
                    *_key_columns(models, gcfg),
                    "retrieved_sentence_id",
                    "retrieved_text",
                    "caption",
                    "tags",
                    "syn_text",
                    F.col("cosine").cast("float").alias("cosine"),
                )
            )
            if kept.limit(1).count():
                lakehouse.insert_new(GOLD_SYNTHETIC_TEXTS, kept)
        finally:
            scored.unpersist()
    finally:
        written.unpersist()
    return tokens


def _summary(
    lakehouse: Lakehouse,
    models: GenerateModels,
    gcfg: GenerateConfig,
    computed: int,
    captioned: int,
    tokens: int,
    n_tags: int,
    random_weights: bool,
) -> GenerateSummary:
    kept = _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXTS), models, gcfg).count()
    reasons = _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS), models, gcfg).groupBy(REASON).count().collect()
    return GenerateSummary(
        models.clip.name,
        models.captioner.name,
        models.llm.name,
        gcfg.prompt_version,
        computed,
        captioned,
        n_tags,
        kept,
        {str(r[REASON]): int(r["count"]) for r in reasons},
        tokens,
        random_weights,
    )


def _funnel(summary: GenerateSummary) -> list[FunnelStep]:
    """Images under the key through the four steps: retrieved text, caption, rewrite, similarity band."""
    rejected = summary.rejected
    by_llm = sum(n for r, n in rejected.items() if r in LLM_REASONS)
    by_band = sum(n for r, n in rejected.items() if r in BAND_REASONS)
    no_text = rejected.get(REASON_NO_RETRIEVED_TEXT, 0)
    by_caption = sum(rejected.values()) - by_llm - by_band - no_text
    total = summary.kept + sum(rejected.values())
    steps = []
    rows = total
    for step, dropped in (
        ("retrieved_text", no_text),
        ("caption", by_caption),
        ("llm_rewrite", by_llm),
        ("similarity_band", by_band),
    ):
        steps.append(FunnelStep(step, rows, rows - dropped))
        rows -= dropped
    return steps
