"""The Spark frames of the generate stage's models: captioner, CLIP zero-shot tagger, LLM rewrite, the VLM of vlm
mode, and the image / synthetic-text similarity band (udfs.captioner, udfs.tagger, udfs.llm, udfs.vlm,
udfs.similarity in ``mapInPandas``).

Each model loads once per Python worker on the device of the running task (``generate.device``); the CLIP text
tower embeds tag prompts and synthetic texts as the embed stage embeds sentences (:mod:`realsyn.clip_frames`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.clip_frames import TextEmbedding, clip_text_frame, text_embedding_rows
from realsyn.config_sections import GenerateConfig
from realsyn.contracts import GOLD_CAPTIONS, GOLD_IMAGE_TAGS, SILVER_TAGS
from realsyn.funnel import REASON
from realsyn.workers import keep_zip_directories, task_device
from udfs.models import ModelSpec, Precision

_REWRITE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType(), False),
        T.StructField("syn_text", T.StringType(), True),
        T.StructField(REASON, T.StringType(), True),
        T.StructField("detail", T.StringType(), True),
        T.StructField("n_tokens", T.IntegerType(), False),
    ]
)
_SCORE_SCHEMA = T.StructType(
    [
        T.StructField("image_id", T.StringType(), False),
        T.StructField("cosine", T.FloatType(), True),
        T.StructField(REASON, T.StringType(), True),
        T.StructField("detail", T.StringType(), True),
    ]
)


def caption_frame(df: DataFrame, gcfg: GenerateConfig, spec: ModelSpec, max_pixels: int) -> DataFrame:
    """(image_id, content) -> gold.captions rows (caption, or a reason and detail)."""

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.captioner import caption_images, get_captioner

        keep_zip_directories()
        captioner = get_captioner(spec, task_device(gcfg.device, "generate.device"), gcfg.precision)
        items = ((i, c) for frame in frames for i, c in zip(frame["image_id"], frame["content"], strict=True))
        for batch in caption_images(
            captioner, items, gcfg.caption_batch_size, gcfg.caption_max_new_tokens, max_pixels=max_pixels
        ):
            n_ok, n_bad = len(batch.ids), len(batch.rejected_ids)
            yield pd.DataFrame(
                {
                    "image_id": batch.ids + batch.rejected_ids,
                    "captioner_id": [spec.name] * (n_ok + n_bad),
                    "caption": batch.captions + [None] * n_bad,
                    REASON: [None] * n_ok + batch.reasons,
                    "detail": [None] * n_ok + batch.details,
                }
            )

    return df.select("image_id", "content").mapInPandas(run, GOLD_CAPTIONS.schema)


def tag_frame(df: DataFrame, gcfg: GenerateConfig, model_id: str, tags: list[str], vectors: np.ndarray) -> DataFrame:
    """(image_id, embedding) -> gold.image_tags rows, against the vocabulary ``tags`` / ``vectors``."""
    top_t, min_z, min_cosine = gcfg.tags.top_t, gcfg.tags.min_z, gcfg.tags.min_cosine

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.tagger import top_tags

        for frame in frames:
            if frame.empty:
                continue
            images = np.stack([np.asarray(v, dtype=np.float32) for v in frame["embedding"]])
            choices = top_tags(images, vectors, top_t, min_z, min_cosine)
            yield pd.DataFrame(
                {
                    "image_id": frame["image_id"].to_numpy(),
                    "model_id": model_id,
                    "tags": [[tags[i] for i in c.indexes] for c in choices],
                    "cosines": [c.cosines for c in choices],
                }
            )

    return df.select("image_id", "embedding").mapInPandas(run, GOLD_IMAGE_TAGS.schema)


def rewrite_frame(df: DataFrame, gcfg: GenerateConfig, spec: ModelSpec) -> DataFrame:
    """(image_id, retrieved_text, caption, tags) -> (image_id, syn_text | null, reason, detail, n_tokens)."""
    from udfs.llm import PromptTemplate

    template = PromptTemplate(gcfg.prompt_version, gcfg.system_prompt, gcfg.user_prompt)

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.llm import check_output, get_llm

        keep_zip_directories()
        llm = get_llm(
            spec,
            task_device(gcfg.device, "generate.device"),
            gcfg.precision,
            backend=gcfg.backend,
            batch_size=gcfg.llm_batch_size,
            gpu_memory_utilization=gcfg.vllm_gpu_memory_utilization,
            max_model_len=gcfg.vllm_max_model_len,
        )
        for frame in frames:
            if frame.empty:
                continue
            chats = [
                template.messages(r, c, list(t))
                for r, c, t in zip(frame["retrieved_text"], frame["caption"], frame["tags"], strict=True)
            ]
            gens = llm.generate(chats, gcfg.max_new_tokens, gcfg.min_new_tokens)
            checked = [
                check_output(g, chat, gcfg.max_output_words, gcfg.reject_truncated, gcfg.max_new_tokens)
                for g, chat in zip(gens, chats, strict=True)
            ]
            yield pd.DataFrame(
                {
                    "image_id": frame["image_id"].to_numpy(),
                    "syn_text": [c.text for c in checked],
                    REASON: [c.reason for c in checked],
                    "detail": [c.detail for c in checked],
                    "n_tokens": [g.n_tokens for g in gens],
                }
            )

    return df.select("image_id", "retrieved_text", "caption", "tags").mapInPandas(run, _REWRITE_SCHEMA)


def vlm_frame(df: DataFrame, gcfg: GenerateConfig, spec: ModelSpec, max_pixels: int) -> DataFrame:
    """(image_id, content, retrieved_text, tags) -> (image_id, syn_text | null, reason, detail, n_tokens): the VLM
    writes each image's text from its pixels and retrieved text (udfs.vlm.write_texts, one call per Arrow batch);
    bytes the decoder refuses (``max_pixels``: embed.max_image_pixels) are rejected with its reason."""
    from udfs.vlm import VlmLimits, VlmPrompt

    prompt = VlmPrompt(gcfg.vlm_prompt_version, gcfg.vlm_system_prompt, gcfg.vlm_user_prompt)
    limits = VlmLimits(
        gcfg.max_new_tokens,
        gcfg.min_new_tokens,
        gcfg.max_output_words,
        gcfg.reject_truncated,
        max_pixels,
        gcfg.vlm_image_pixels,
    )

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.vlm import get_vlm, write_texts

        keep_zip_directories()
        vlm = get_vlm(
            spec,
            task_device(gcfg.device, "generate.device"),
            gcfg.precision,
            backend=gcfg.backend,
            batch_size=gcfg.vlm_batch_size,
            gpu_memory_utilization=gcfg.vllm_gpu_memory_utilization,
            max_model_len=gcfg.vllm_max_model_len,
        )
        for frame in frames:
            if frame.empty:
                continue
            rows = list(zip(frame["image_id"], frame["content"], frame["retrieved_text"], frame["tags"], strict=True))
            written = write_texts(vlm, rows, prompt, limits)
            yield pd.DataFrame(
                {
                    "image_id": [w.key for w in written],
                    "syn_text": [w.text for w in written],
                    REASON: [w.reason for w in written],
                    "detail": [w.detail for w in written],
                    "n_tokens": [w.n_tokens for w in written],
                }
            )

    return df.select("image_id", "content", "retrieved_text", "tags").mapInPandas(run, _REWRITE_SCHEMA)


def score_frame(
    df: DataFrame,
    gcfg: GenerateConfig,
    precision: Precision,
    text_batch: int,
    spec: ModelSpec,
    band: tuple[float, float],
) -> DataFrame:
    """(image_id, syn_text, embedding) -> (image_id, cosine, reason, detail): the synthetic text embedded by
    the CLIP model's text tower (realsyn.clip_frames, as the embed stage embeds sentences), dotted with the image's
    unit vector, and judged against ``band`` (udfs.similarity.band_reason)."""
    low, high = band
    how = TextEmbedding(spec, gcfg.device, "generate.device", precision, text_batch)

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from udfs.similarity import band_detail, band_reason

        for rows in text_embedding_rows(frames, how, "image_id", "syn_text", keep=("image_embedding",)):
            cosine = [
                None if text is None or image is None else float(np.dot(text, np.asarray(image, dtype=np.float32)))
                for text, image in zip(rows["embedding"], rows["image_embedding"], strict=True)
            ]
            reasons = [band_reason(c, low, high) for c in cosine]
            yield pd.DataFrame(
                {
                    "image_id": rows["image_id"].to_numpy(),
                    "cosine": cosine,
                    REASON: reasons,
                    "detail": [
                        None if r is None else band_detail(c, low, high) for c, r in zip(cosine, reasons, strict=True)
                    ],
                }
            )

    pairs = df.select("image_id", "syn_text", F.col("embedding").alias("image_embedding"))
    return pairs.mapInPandas(run, _SCORE_SCHEMA)


def embed_tag_frame(
    df: DataFrame, gcfg: GenerateConfig, precision: Precision, text_batch: int, spec: ModelSpec
) -> DataFrame:
    """(tag, source, frequency, prompt) -> silver.tags rows: each prompt embedded once by the CLIP text tower
    (realsyn.clip_frames); a tag whose prompt is blank gets no row."""
    how = TextEmbedding(spec, gcfg.device, "generate.device", precision, text_batch)
    rows = clip_text_frame(df, how, "tag", "prompt", keep=("source", "frequency", "prompt"), rejects=False)
    return rows.select(*SILVER_TAGS.columns)
