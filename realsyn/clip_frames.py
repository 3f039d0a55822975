"""CLIP embeddings as Spark frames: the rows an embedding UDF yields, and the CLIP text tower in ``mapInPandas``.

Shared by the stages that embed text with the CLIP model of ``embed.model``: the embed stage (sentences) and the
generate stage (tag prompts, synthetic texts), so that a text is embedded the same way wherever it is. The model
loads once per Python worker (udfs.clip.get_encoder) on the device of the running task (realsyn.workers); texts
are batched across Arrow batches and tokenised ``prefetch`` batches ahead of the model (udfs.clip.embed_texts).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from realsyn.funnel import REASON
from realsyn.workers import keep_zip_directories, task_device
from udfs.models import DevicePolicy, ModelSpec, Precision

if TYPE_CHECKING:
    from udfs.clip import EmbeddedBatch


def embedding_schema(key: str, extra: Sequence[T.StructField] = ()) -> T.StructType:
    """The rows of an embedding frame: ``key``, model_id, a vector or a reason and detail (exactly one of the two
    is set), then the ``extra`` columns passed through."""
    return T.StructType(
        [
            T.StructField(key, T.StringType(), False),
            T.StructField("model_id", T.StringType(), False),
            T.StructField("embedding", T.ArrayType(T.FloatType(), False), True),
            T.StructField(REASON, T.StringType(), True),
            T.StructField("detail", T.StringType(), True),
            *extra,
        ]
    )


def embedded_rows(
    key: str, model_id: str, batch: EmbeddedBatch, extra: dict[str, list[Any]] | None = None
) -> pd.DataFrame:
    """One model batch as rows of :func:`embedding_schema`: its accepted ids with their vectors, then its rejected
    ids with their reasons; ``extra`` holds the passed-through columns in that order of ids."""
    n_ok, n_bad = len(batch.ids), len(batch.rejected_ids)
    return pd.DataFrame(
        {
            key: list(batch.ids) + list(batch.rejected_ids),
            "model_id": [model_id] * (n_ok + n_bad),
            "embedding": list(batch.vectors[:n_ok]) + [None] * n_bad,
            REASON: [None] * n_ok + list(batch.reasons),
            "detail": [None] * n_ok + list(batch.details),
            **(extra or {}),
        }
    )


@dataclass(frozen=True)
class TextEmbedding:
    """How a frame runs the CLIP text tower of ``spec``: on the task's device under ``device`` (``device_key`` is
    the config key named when the policy cannot be met), at ``precision``, ``batch_size`` texts a model batch,
    ``prefetch`` batches tokenised ahead."""

    spec: ModelSpec
    device: DevicePolicy
    device_key: str
    precision: Precision
    batch_size: int
    prefetch: int = 2


def text_embedding_rows(
    frames: Iterable[pd.DataFrame],
    how: TextEmbedding,
    key: str,
    text: str,
    keep: Sequence[str] = (),
    rejects: bool = True,
) -> Iterator[pd.DataFrame]:
    """In a Python worker: the ``text`` of every row of ``frames`` embedded, as rows of :func:`embedding_schema`
    keyed by ``key`` with the ``keep`` columns passed through; a row whose text is null or blank is a reject row
    (udfs.clip.REASON_EMPTY_TEXT), or left out when not ``rejects``."""
    from udfs.clip import embed_texts, get_encoder

    keep_zip_directories()
    encoder = get_encoder(how.spec, task_device(how.device, how.device_key), how.precision)
    # Texts are batched across frames: each row goes in under its sequence number, its key and kept values wait here.
    waiting: dict[int, tuple[Any, ...]] = {}

    def items() -> Iterator[tuple[int, Any]]:
        seq = 0
        for frame in frames:
            for row in zip(frame[key], frame[text], *(frame[c] for c in keep), strict=True):
                waiting[seq] = (row[0], *row[2:])
                yield seq, row[1]
                seq += 1

    for batch in embed_texts(encoder, items(), how.batch_size, prefetch=how.prefetch):
        ok = [waiting.pop(seq) for seq in batch.ids]
        bad = [waiting.pop(seq) for seq in batch.rejected_ids]
        if not rejects:
            bad, batch = [], replace(batch, rejected_ids=[], reasons=[], details=[])
        if ok or bad:
            batch = replace(batch, ids=[r[0] for r in ok], rejected_ids=[r[0] for r in bad])
            extra = {c: [r[1 + i] for r in ok + bad] for i, c in enumerate(keep)}
            yield embedded_rows(key, how.spec.name, batch, extra)


def clip_text_frame(
    df: DataFrame, how: TextEmbedding, key: str, text: str, keep: Sequence[str] = (), rejects: bool = True
) -> DataFrame:
    """(``key``, ``text``, *``keep``) -> (``key``, model_id, embedding | null, reason | null, detail, *``keep``):
    each text embedded by the CLIP text tower (see :func:`text_embedding_rows`)."""
    columns = list(dict.fromkeys([key, text, *keep]))
    extra = [df.schema[c] for c in keep]

    def run(frames: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from text_embedding_rows(frames, how, key, text, keep, rejects)

    return df.select(*columns).mapInPandas(run, embedding_schema(key, extra))
