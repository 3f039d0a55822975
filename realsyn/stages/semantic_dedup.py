"""Stage semantic_dedup (paper section 3.1): images and sentences whose embeddings are near-parallel are one.

Runs after embed, on what extraction kept: ``silver.images`` with ``silver.image_embeddings`` and
``silver.sentences`` with ``silver.sentence_embeddings``, each side on its own settings (section
``semantic_dedup``, keys ``images`` and ``sentences``). Pairs with cosine >= ``min_cosine`` are searched within
k-means clusters (:mod:`realsyn.semdedup`), grouped by connected components, and each group keeps one
representative, by the rule of the extraction stages' near-duplicate steps: the largest resolution, then the
smallest ``image_id``; the most occurrences, then the smallest ``sentence_id``. The representative takes over its
group's URLs and documents (and, for sentences, occurrences); the others leave the silver table for its rejects
table, step ``semantic_dedup``, reason ``semantic_duplicate``, ``duplicate_of`` naming the representative. Rows
without an embedding are kept as they are.

A side does not run when it is switched off, when its tables do not exist yet, or when its embeddings come from a
model with random weights (they say nothing about content; the summary says which). Several models and no
``embedding_model`` stop the run naming that key, as every stage that reads embeddings does.

Retry safety, one commit per table: the rejects are merged in first (keyed by id, so a rerun adds nothing), then
the silver table is replaced with the kept rows, its commit noted with the model, the embeddings' version and the
settings. A side whose silver table's last commit carries the note it would write is done and is not computed
again; a rerun after a kill before that commit recomputes from the same silver table and writes the same rows.
Extraction rewrites the silver tables from bronze on each of its runs (its duplicates included again), and this
stage then removes them again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from realsyn.components import REPRESENTATIVE, by_resolution, merge_into_representatives
from realsyn.config_sections import Config, SemanticDedupConfig
from realsyn.contracts import (
    REASON,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
    Table,
)
from realsyn.funnel import FunnelStep, Models, write_funnel
from realsyn.semdedup import SemDedupParams, check_removed_share, refusal, semantic_dedup
from realsyn.tables import Lakehouse
from realsyn.vectors import resolve_model_id

STAGE = "semantic_dedup"
REASON_SEMANTIC = "semantic_duplicate"


@dataclass(frozen=True)
class Side:
    """One kind of item the stage deduplicates: its tables, its id, how a group's rows merge and who leads it."""

    name: str
    kept: Table
    rejects: Table
    embeddings: Table
    id_col: str
    unions: tuple[str, ...]
    sums: tuple[str, ...]
    ranking: Callable[[], list[Column]]

    def settings(self, cfg: Config) -> SemanticDedupConfig:
        """This side's section of the config."""
        section: SemanticDedupConfig = getattr(cfg.semantic_dedup, self.name)
        return section

    @property
    def key(self) -> str:
        """The config key of this side's settings."""
        return f"{STAGE}.{self.name}"


IMAGES = Side(
    "images",
    SILVER_IMAGES,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGE_EMBEDDINGS,
    "image_id",
    ("url_ids", "doc_ids"),
    (),
    by_resolution,
)
SENTENCES = Side(
    "sentences",
    SILVER_SENTENCES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCE_EMBEDDINGS,
    "sentence_id",
    ("doc_ids",),
    ("n_occurrences",),
    lambda: [F.desc("n_occurrences")],
)
SIDES = (IMAGES, SENTENCES)


def reject_rows(others: DataFrame, side: Side) -> DataFrame:
    """The group members that are not representatives, in the shape of ``side``'s rejects table."""
    columns = []
    for f in side.rejects.schema.fields:
        if f.name == "reject_id":
            value = F.col(side.id_col)
        elif f.name == "step":
            value = F.lit(STAGE)
        elif f.name == REASON:
            value = F.lit(REASON_SEMANTIC)
        elif f.name == "duplicate_of":
            value = F.col(REPRESENTATIVE)
        elif f.name in others.columns:
            value = F.col(f.name)
        else:
            value = F.lit(None)
        columns.append(value.cast(f.dataType).alias(f.name))
    return others.select(*columns)


def deduplicate(
    rows: DataFrame, embeddings: DataFrame, side: Side, cfg: SemanticDedupConfig
) -> tuple[DataFrame, DataFrame]:
    """(kept rows, rejects) of ``rows`` (the side's silver table) given ``embeddings`` (id, embedding) of one model.

    Rows without an embedding are kept as they are.
    """
    params = SemDedupParams(
        threshold=cfg.min_cosine,
        items_per_cluster=cfg.items_per_cluster,
        clusters_per_item=cfg.clusters_per_item,
        seed=cfg.seed,
    )
    vectors = embeddings.select(side.id_col, "embedding")
    embedded = rows.join(vectors, side.id_col).localCheckpoint(eager=True)
    grouped = semantic_dedup(embedded, side.id_col, "embedding", side.ranking(), params).drop("embedding")
    grouped = grouped.localCheckpoint(eager=True)
    kept, others = merge_into_representatives(grouped, side.id_col, unions=side.unions, sums=side.sums)
    alone = rows.join(vectors.select(side.id_col), side.id_col, "left_anti")
    return kept.select(*side.kept.columns).unionByName(alone.select(*side.kept.columns)), reject_rows(others, side)


@dataclass(frozen=True)
class SideResult:
    """What one side did: its funnel step, or why it did not run; ``computed`` false when it was already done."""

    side: str
    model_id: str | None = None
    step: FunnelStep | None = None
    computed: bool = False
    not_run: str | None = None


def _blocker(lakehouse: Lakehouse, side: Side, cfg: SemanticDedupConfig) -> str | None:
    if not cfg.enabled:
        return f"{side.key}.enabled is false"
    missing = [t.name for t in (side.kept, side.embeddings) if not lakehouse.exists(t)]
    return f"{', '.join(missing)} does not exist yet" if missing else None


def _note(model_id: str, embeddings_version: int, cfg: SemanticDedupConfig) -> str:
    settings = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]
    return f"realsyn {STAGE}: model {model_id}, embeddings v{embeddings_version}, settings {settings}"


def _counts(lakehouse: Lakehouse, side: Side) -> FunnelStep:
    """The side's step from the tables: rows kept now, and rows in = kept + semantic duplicates rejected."""
    kept = lakehouse.read(side.kept).count()
    rejects = (
        lakehouse.read(side.rejects).where(F.col("step") == STAGE).count() if lakehouse.exists(side.rejects) else 0
    )
    return FunnelStep(side.name, kept + rejects, kept)


def run_side(lakehouse: Lakehouse, side: Side, cfg: Config) -> SideResult:
    """Remove the semantic duplicates of one side (see the module's docstring for when it does not run)."""
    scfg = side.settings(cfg)
    why = _blocker(lakehouse, side, scfg)
    if why is not None:
        return SideResult(side.name, not_run=why)
    table = lakehouse.read(side.embeddings)
    model_id = resolve_model_id(table, scfg.embedding_model, f"{side.key}.embedding_model")
    if model_id is None:
        return SideResult(side.name, not_run=f"{side.embeddings.name} is empty")
    why = refusal(model_id, cfg.embed)
    if why is not None:
        return SideResult(side.name, model_id, not_run=why)
    note = _note(model_id, lakehouse.version(side.embeddings), scfg)
    computed = lakehouse.last_note(side.kept) != note
    if computed:
        rows = lakehouse.read(side.kept)
        kept, rejects = deduplicate(rows, table.where(F.col("model_id") == model_id), side, scfg)
        kept = kept.localCheckpoint(eager=True)
        rows_in, rows_out = rows.count(), kept.count()
        check_removed_share(
            f"{side.name} semantic dedup", rows_in, rows_out, scfg.max_removed_share, f"{side.key}.max_removed_share"
        )
        if rows_out < rows_in:
            lakehouse.insert_new(side.rejects, rejects, replace_when="true")
        lakehouse.overwrite(side.kept, kept, note=note)
    return SideResult(side.name, model_id, _counts(lakehouse, side), computed)


@dataclass(frozen=True)
class SemanticDedupSummary:
    """What one run of the stage did, side by side."""

    sides: tuple[SideResult, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        parts = []
        for r in self.sides:
            if r.step is None:
                parts.append(f"{r.side}: not run ({r.not_run})")
            else:
                done = "" if r.computed else ", done by an earlier run"
                parts.append(
                    f"{r.side} {r.step.rows_in:,} -> {r.step.rows_out:,} "
                    f"({r.step.rows_rejected:,} semantic duplicates, model {r.model_id}{done})"
                )
        return "semantic dedup: " + "; ".join(parts)


def run_semantic_dedup(lakehouse: Lakehouse, cfg: Config) -> SemanticDedupSummary:
    """Remove semantic duplicates from silver.images and silver.sentences; write their rejects and the funnel."""
    results = tuple(run_side(lakehouse, side, cfg) for side in SIDES)
    by_model: dict[str | None, list[FunnelStep]] = {}
    for r in results:
        if r.step is not None:
            by_model.setdefault(r.model_id, []).append(r.step)
    for model_id, steps in by_model.items():
        write_funnel(lakehouse, STAGE, steps, Models(model_id=model_id))
    return SemanticDedupSummary(results)
