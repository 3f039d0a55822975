"""Generate stage (paper section 3.3): captioner + tagger + LLM rewrite (or one VLM), then the similarity filter.

For every image of ``silver.images`` not yet done under the key (image_id, model_id, captioner_id, llm_id,
prompt_version) of :meth:`GenerateConfig.key`, where model_id is ``embed.model`` (the CLIP model of the embeddings and
of ``silver.retrieval``), in ``generate.mode: pipeline``:

1. the top retrieved text (rank 1 of ``silver.retrieval``, its text from ``silver.sentences``); none:
   reject ``no_retrieved_text``;
2. a caption (``gold.captions``, key image_id + captioner_id, computed once per captioner): the image decoded by
   the embed stage's decoder and captioned greedily; an undecodable image or an empty caption is kept there with
   its reason and becomes a reject here;
3. tags (``gold.image_tags``, key image_id + model_id): CLIP zero-shot over ``silver.tags`` (the base list and
   tags mined from ``silver.sentences``, mostly read from ``silver.sentence_phrases``, which the extraction's parse
   wrote; each tag embedded once by the CLIP text tower) read off the stored image
   embedding; an image with no tag above the threshold gets an empty list and the prompt says ``none``;
4. the LLM rewrite of retrieved text, caption and tags under the configured prompt (rejects: invalid UTF-8,
   empty, prompt echo only, truncated, over-long);
5. the synthetic text embedded by the CLIP model (the embed stage's text path); pairs whose cosine with the
   image lies in the model's ``similarity_band`` go to ``gold.synthetic_texts``, the others to
   ``gold.synthetic_text_rejects`` as ``too_similar_ocr_like`` / ``too_dissimilar``.

In ``generate.mode: vlm`` steps 2 and 4 are one: a vision-language model (``generate.vlm``) gets the decoded image
(the embed stage's decoder; an undecodable image is a reject with its reason), the retrieved text and the VLM prompt,
and writes the text under the same checks; tags (step 3) are computed as in pipeline mode (balance's concept scales
read them) and go into the prompt only where ``generate.vlm_user_prompt`` holds ``{tags}``. The key holds the VLM's
name as captioner_id and llm_id and ``vlm_prompt_version``; the rows have an empty caption (no captioner ran).

Every write is a MERGE on its key, so a killed run resumes where it stopped and a rerun computes nothing; a new
prompt version, captioner, LLM, VLM or mode computes everything again under its own key and leaves the old rows
alone (captions and tags are reused where their own key is unchanged). Models load once per Python worker on the
GPU Spark assigned to the task. With the tiny random-weight models of tests and the demo, every caption, tag and
text is meaningless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from realsyn.config import ConfigError, registry_path
from realsyn.config_sections import Config, GenerationKey
from realsyn.contracts import (
    GOLD_CAPTIONS,
    GOLD_IMAGE_TAGS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCE_PHRASES,
    SILVER_SENTENCES,
    SILVER_TAGS,
)
from realsyn.funnel import REASON, FunnelStep, Models, write_funnel
from realsyn.spark import ARROW_BATCH_CONF, session_conf
from realsyn.synthetic_frames import caption_frame, embed_tag_frame, rewrite_frame, score_frame, tag_frame, vlm_frame
from realsyn.tables import Lakehouse
from realsyn.tag_vocabulary import tag_vocabulary
from udfs.models import ModelKind, ModelSpec, RegistryError, check_local_files, get_spec, load_registry

log = logging.getLogger(__name__)


REASON_NO_RETRIEVED_TEXT = "no_retrieved_text"
# Reasons by the step that gives them (the funnel's steps); the caption step (vlm mode: the decode step) passes on
# the decoder's reasons.
LLM_REASONS = ("invalid_utf8", "empty_output", "prompt_echo", "truncated", "over_long")
BAND_REASONS = ("too_similar_ocr_like", "too_dissimilar", "text_not_embeddable")
# gold.synthetic_texts.caption of vlm mode (the column is not nullable): no captioner ran, the VLM read the image.
NO_CAPTION = ""


@dataclass(frozen=True)
class GenerateModels:
    """The registry entries of a run (those of its mode; the others None) and the similarity band it keeps."""

    clip: ModelSpec
    band: tuple[float, float]
    captioner: ModelSpec | None = None
    llm: ModelSpec | None = None
    vlm: ModelSpec | None = None

    @property
    def used(self) -> list[ModelSpec]:
        """Every entry the run loads."""
        return [s for s in (self.clip, self.captioner, self.llm, self.vlm) if s is not None]


def resolve_models(cfg: Config) -> GenerateModels:
    """The registry entries of ``embed.model`` and of the mode (``generate.captioner`` and ``generate.llm``, or
    ``generate.vlm``), and the band.

    Raises ConfigError naming the key and registry file when an entry is absent or of the wrong kind, or when the
    CLIP entry has no ``similarity_band`` and ``generate.similarity_band`` is not set; ModelNotAvailable when a
    local path an entry names does not exist.
    """
    path = registry_path(cfg.embed.registry)
    try:
        registry = load_registry(path)
    except RegistryError as e:
        raise ConfigError(f"embed.registry: {e}") from None
    gcfg = cfg.generate
    wanted: list[tuple[str, str, ModelKind]] = [("embed.model", cfg.embed.model, "clip")]
    if gcfg.mode == "vlm":
        wanted.append(("generate.vlm", gcfg.vlm, "vlm"))
    else:
        wanted += [("generate.captioner", gcfg.captioner, "captioner"), ("generate.llm", gcfg.llm, "llm")]
    specs: dict[ModelKind, ModelSpec] = {}
    for key, name, kind in wanted:
        try:
            specs[kind] = get_spec(registry, name, str(path), kind=kind)
        except RegistryError as e:
            raise ConfigError(f"{key}: {e}") from None
    for spec in specs.values():
        check_local_files(spec)
    clip = specs["clip"]
    band = gcfg.similarity_band or clip.similarity_band
    if band is None:
        raise ConfigError(
            f"generate.similarity_band: model {clip.name!r} of {path} has no similarity_band; set one there or in "
            "generate.similarity_band (the paper's [0.51, 0.61] holds for EVA02-CLIP only)"
        )
    return GenerateModels(
        clip, (float(band[0]), float(band[1])), specs.get("captioner"), specs.get("llm"), specs.get("vlm")
    )


def ensure_tags(lakehouse: Lakehouse, cfg: Config, spec: ModelSpec) -> tuple[int, bool]:
    """Build silver.tags for the CLIP model unless it has rows (or ``generate.tags.rebuild``); (tags, built)."""
    gcfg = cfg.generate
    lakehouse.create_if_absent(SILVER_TAGS)
    present = lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == spec.name).limit(1).count()
    if present and not gcfg.tags.rebuild:
        return lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == spec.name).count(), False
    stored = lakehouse.read(SILVER_SENTENCE_PHRASES) if lakehouse.exists(SILVER_SENTENCE_PHRASES) else None
    vocab = tag_vocabulary(lakehouse.read(SILVER_SENTENCES), gcfg, stored)
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
    """What :func:`run_generate` did, under one key (model, captioner, LLM, prompt version; vlm mode: the VLM is
    captioner and LLM)."""

    mode: str
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
        if self.mode == "vlm":
            models = f"{self.model_id} | vlm {self.llm_id}"
            work = f"{self.tokens:,} tokens generated"
        else:
            models = f"{self.model_id} | {self.captioner_id} | {self.llm_id}"
            work = f"{self.captioned:,} captioned, {self.tokens:,} tokens generated"
        text = (
            f"generate [{models} | prompt {self.prompt_version}]: {self.computed:,} images this run ({work}); "
            f"{self.kept:,} synthetic texts kept in total, rejected: {reasons}; tag vocabulary {self.tags:,}"
        )
        if self.random_weights:
            text += ". Models with random weights: captions, tags and texts are meaningless"
        return text


def _key_columns(key: GenerationKey) -> list[Column]:
    return [F.lit(value).alias(column) for column, value in key.columns().items()]


def _of_key(df: DataFrame, key: GenerationKey) -> DataFrame:
    return df.filter(reduce(Column.__and__, [F.col(c) == v for c, v in key.columns().items()]))


def _rejects(df: DataFrame, key: GenerationKey) -> DataFrame:
    return df.select("image_id", *_key_columns(key), F.col(REASON), F.col("detail"))


def _with_arrow_batch(df: DataFrame, rows: int) -> None:
    df.sparkSession.conf.set(ARROW_BATCH_CONF, str(rows))


def run_generate(lakehouse: Lakehouse, cfg: Config) -> GenerateSummary:
    """Write a synthetic text or a reject for every image of silver.images not yet done under the current key."""
    models = resolve_models(cfg)
    key = cfg.generate.key(models.clip.name)
    random_weights = any(s.random_init for s in models.used)
    for table in (GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS, GOLD_CAPTIONS, GOLD_IMAGE_TAGS):
        lakehouse.create_if_absent(table)
    needed = [SILVER_IMAGES, SILVER_IMAGE_EMBEDDINGS, SILVER_RETRIEVAL, SILVER_SENTENCES]
    missing = [n for n in needed if not lakehouse.exists(n)]
    if missing:
        log.warning("generate: %s not there yet; nothing to generate", ", ".join(map(str, missing)))
        return _summary(lakehouse, cfg, key, 0, 0, 0, 0, random_weights)
    # Each model pass sets its own Arrow batch size; the session's is restored afterwards.
    with session_conf(lakehouse.spark, ARROW_BATCH_CONF, str(cfg.generate.arrow_batch_size)):
        computed, captioned, tokens, n_tags = _generate(lakehouse, cfg, models, key)
    summary = _summary(lakehouse, cfg, key, computed, captioned, tokens, n_tags, random_weights)
    used = Models(key.model_id, key.captioner_id, key.llm_id, key.prompt_version)
    write_funnel(lakehouse, "generate", _funnel(summary), used)
    return summary


def _prompt_uses_tags(cfg: Config) -> bool:
    """Whether the texts are written from the tags: always in pipeline mode; in vlm mode where its prompt asks."""
    return cfg.generate.mode == "pipeline" or "{tags}" in cfg.generate.vlm_user_prompt


def _generate(
    lakehouse: Lakehouse, cfg: Config, models: GenerateModels, key: GenerationKey
) -> tuple[int, int, int, int]:
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
        _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXTS), key)
        .select("image_id")
        .unionByName(_of_key(lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS), key).select("image_id"))
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
            n_tags = 0
            if lakehouse.exists(SILVER_TAGS):
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
            lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(no_text, key))
        with_text = todo.filter(F.col("retrieved_text").isNotNull())
        # Tags in both modes: vlm mode's prompt may not use them, but they are the stage's product (gold.image_tags,
        # silver.tags) that balance's concept scales read.
        n_tags, _ = ensure_tags(lakehouse, cfg, models.clip)
        _tag(lakehouse, cfg, models.clip, with_text)
        captioned = 0
        if models.vlm is not None:
            written, ready = _vlm_write(lakehouse, cfg, models.vlm, with_text)
        else:
            assert models.captioner is not None and models.llm is not None
            captioned = _caption(lakehouse, cfg, models.captioner, with_text)
            written, ready = _rewrite(lakehouse, cfg, models.captioner, models.llm, key, with_text)
        written = written.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            tokens = _filter_and_write(lakehouse, cfg, models, key, written, ready)
        finally:
            written.unpersist()
    finally:
        todo.unpersist()
    return computed, captioned, tokens, n_tags


def _caption(lakehouse: Lakehouse, cfg: Config, spec: ModelSpec, images: DataFrame) -> int:
    gcfg = cfg.generate
    have = lakehouse.read(GOLD_CAPTIONS).filter(F.col("captioner_id") == spec.name).select("image_id")
    need = images.select("image_id").join(have, "image_id", "left_anti")
    # image_id is silver.images' key. need's ids come from the persisted todo, whose size Spark knows: they are
    # broadcast where they fit, so the bytes are read where they lie and no image's bytes are shuffled.
    need = need.join(lakehouse.read(SILVER_IMAGES).select("image_id", "content"), "image_id")
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


def _with_tags(lakehouse: Lakehouse, cfg: Config, model_id: str, images: DataFrame) -> DataFrame:
    """``images`` with their tags of gold.image_tags (an empty list where none, or where the prompt uses none)."""
    if not _prompt_uses_tags(cfg):
        return images.withColumn("tags", F.array().cast("array<string>"))
    image_tags = lakehouse.read(GOLD_IMAGE_TAGS).filter(F.col("model_id") == model_id)
    return images.join(image_tags.select("image_id", "tags"), "image_id", "left").withColumn(
        "tags", F.coalesce(F.col("tags"), F.array().cast("array<string>"))
    )


def _rewrite(
    lakehouse: Lakehouse,
    cfg: Config,
    captioner: ModelSpec,
    llm: ModelSpec,
    key: GenerationKey,
    images: DataFrame,
) -> tuple[DataFrame, DataFrame]:
    """Pipeline mode: images without a caption become rejects; the others are rewritten by the LLM. Returns the
    rewrite's rows (image_id, syn_text, reason, detail, n_tokens) and what they were written from."""
    gcfg = cfg.generate
    captions = lakehouse.read(GOLD_CAPTIONS).filter(F.col("captioner_id") == captioner.name)
    joined = images.join(captions.select("image_id", "caption", REASON, "detail"), "image_id", "left")
    no_caption = joined.filter(F.col("caption").isNull()).select(
        "image_id",
        F.coalesce(F.col(REASON), F.lit("empty_caption")).alias(REASON),
        F.coalesce(F.col("detail"), F.lit("")).alias("detail"),
    )
    if no_caption.limit(1).count():
        lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(no_caption, key))
    ready = _with_tags(lakehouse, cfg, key.model_id, joined.filter(F.col("caption").isNotNull()).drop(REASON, "detail"))
    if gcfg.partitions:
        ready = ready.repartition(gcfg.partitions)
    _with_arrow_batch(ready, gcfg.arrow_batch_size)
    return rewrite_frame(ready, gcfg, llm), ready


def _vlm_write(lakehouse: Lakehouse, cfg: Config, vlm: ModelSpec, images: DataFrame) -> tuple[DataFrame, DataFrame]:
    """vlm mode: the VLM writes every image's text from its bytes and retrieved text (decoder rejects among the
    rows). Returns those rows (image_id, syn_text, reason, detail, n_tokens) and what they were written from."""
    gcfg = cfg.generate
    ready = _with_tags(lakehouse, cfg, cfg.embed.model, images).withColumn("caption", F.lit(NO_CAPTION))
    with_bytes = ready.join(lakehouse.read(SILVER_IMAGES).select("image_id", "content"), "image_id")
    if gcfg.partitions:
        with_bytes = with_bytes.repartition(gcfg.partitions)
    _with_arrow_batch(with_bytes, gcfg.arrow_batch_size)
    return vlm_frame(with_bytes, gcfg, vlm, cfg.embed.max_image_pixels), ready


def _filter_and_write(
    lakehouse: Lakehouse,
    cfg: Config,
    models: GenerateModels,
    key: GenerationKey,
    written: DataFrame,
    ready: DataFrame,
) -> int:
    """Reject what the writer's checks rejected, score the rest against the band, write kept texts and rejects under
    ``key``; the tokens generated. ``written``: (image_id, syn_text, reason, detail, n_tokens); ``ready``: what
    each text was written from (retrieved sentence and text, caption, tags)."""
    gcfg = cfg.generate
    embeddings = lakehouse.read(SILVER_IMAGE_EMBEDDINGS).filter(F.col("model_id") == models.clip.name)
    stats = written.agg(F.count(F.lit(1)).alias("n"), F.sum("n_tokens").alias("tokens")).first()
    if stats is None or not stats["n"]:
        return 0
    tokens = int(stats["tokens"] or 0)
    bad = written.filter(F.col(REASON).isNotNull()).select("image_id", REASON, "detail")
    if bad.limit(1).count():
        lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(bad, key))
    good = written.filter(F.col(REASON).isNull()).select("image_id", "syn_text")
    with_vectors = good.join(embeddings.select("image_id", "embedding"), "image_id", "left")
    scored = (
        score_frame(with_vectors, gcfg, cfg.embed.precision, cfg.embed.text_batch_size, models.clip, models.band)
        .join(good, "image_id")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        out = scored.filter(F.col(REASON).isNotNull()).select("image_id", REASON, "detail")
        if out.limit(1).count():
            lakehouse.insert_new(GOLD_SYNTHETIC_TEXT_REJECTS, _rejects(out, key))
        kept = (
            scored.filter(F.col(REASON).isNull())
            .join(ready.select("image_id", "retrieved_sentence_id", "retrieved_text", "caption", "tags"), "image_id")
            .select(
                "image_id",
                *_key_columns(key),
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
    return tokens


def _summary(
    lakehouse: Lakehouse,
    cfg: Config,
    key: GenerationKey,
    computed: int,
    captioned: int,
    tokens: int,
    n_tags: int,
    random_weights: bool,
) -> GenerateSummary:
    kept = _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXTS), key).count()
    reasons = _of_key(lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS), key).groupBy(REASON).count().collect()
    return GenerateSummary(
        cfg.generate.mode,
        key.model_id,
        key.captioner_id,
        key.llm_id,
        key.prompt_version,
        computed,
        captioned,
        n_tags,
        kept,
        {str(r[REASON]): int(r["count"]) for r in reasons},
        tokens,
        random_weights,
    )


def _funnel(summary: GenerateSummary) -> list[FunnelStep]:
    """Images under the key through the four steps: retrieved text, caption, rewrite, similarity band (vlm mode:
    retrieved text, image decode, VLM, similarity band)."""
    rejected = summary.rejected
    by_llm = sum(n for r, n in rejected.items() if r in LLM_REASONS)
    by_band = sum(n for r, n in rejected.items() if r in BAND_REASONS)
    no_text = rejected.get(REASON_NO_RETRIEVED_TEXT, 0)
    by_image = sum(rejected.values()) - by_llm - by_band - no_text
    total = summary.kept + sum(rejected.values())
    image_step, writer_step = ("decode_image", "vlm_write") if summary.mode == "vlm" else ("caption", "llm_rewrite")
    steps = []
    rows = total
    for step, dropped in (
        ("retrieved_text", no_text),
        (image_step, by_image),
        (writer_step, by_llm),
        ("similarity_band", by_band),
    ):
        steps.append(FunnelStep(step, rows, rows - dropped))
        rows -= dropped
    return steps
