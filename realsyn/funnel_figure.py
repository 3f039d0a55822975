"""The paper's Figure 2 from ``gold.funnel`` rows: stages in pipeline order, and an image and a sentence chain.

Pure Python over row dicts (no Spark), so that the report stage and ``notebooks/dataset.ipynb`` order and draw
the funnel the same way. ``STAGE_ORDER`` is the pipeline's stage order (``realsyn.pipeline.STAGE_NAMES``, which a
test checks it against): a constant here because shared modules and stages do not import the pipeline, and
``gold.runs`` (which has each stage's index) exists only where the pipeline job ran, not where stages ran alone.

A chain is one number per link, each the rows kept (or entering) a named ``(stage, step)`` of the funnel; a link
whose step is not in the table (a stage that did not run, e.g. semantic dedup with random-weight models) is left
out, never drawn as zero.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

STAGE_ORDER: tuple[str, ...] = (
    "ingest",
    "fetch",
    "extract_images",
    "extract_sentences",
    "embed",
    "semantic_dedup",
    "cluster_sentences",
    "retrieve",
    "cluster_images",
    "generate",
    "balance",
    "export",
    "report",
)
# gold.funnel's columns that name the models of a stage (null for stages that run none).
MODEL_COLUMNS: tuple[str, ...] = ("model_id", "captioner", "llm", "prompt_version")
# gold.dataset's names for the same key, by funnel column.
DATASET_KEY_COLUMNS: dict[str, str] = {
    "model_id": "model_id",
    "captioner": "captioner_id",
    "llm": "llm_id",
    "prompt_version": "prompt_version",
}
# A chain whose largest positive count is under this many times its smallest is drawn on a linear axis.
LINEAR_MAX_RATIO = 1000
SCALE_STEP = re.compile(r"scale\[(?P<name>.+)\]")

Row = Mapping[str, Any]


def stage_rank(stage: str) -> int:
    """Position of ``stage`` in the pipeline; a stage the pipeline does not know comes after every known one."""
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def funnel_order(row: Row) -> tuple[int, str, tuple[str, ...], int]:
    """Sort key of a gold.funnel row: pipeline order of its stage, then its models, then ``step_index``."""
    models = tuple(str(row.get(c) or "") for c in MODEL_COLUMNS)
    return stage_rank(str(row["stage"])), str(row["stage"]), models, int(row["step_index"])


def in_pipeline_order(rows: Iterable[Row]) -> list[Row]:
    """``rows`` of gold.funnel sorted by :func:`funnel_order`."""
    return sorted(rows, key=funnel_order)


@dataclass(frozen=True)
class Link:
    """One bar of a chain: the ``count`` column of the funnel row ``(stage, step)``."""

    label: str
    stage: str
    step: str
    count: Literal["rows_in", "rows_out"] = "rows_out"


# Image chain, in pipeline order; each balance scale follows its last link.
IMAGE_LINKS: tuple[Link, ...] = (
    Link("documents", "ingest", "documents"),
    Link("image references", "ingest", "image_refs"),
    Link("distinct URLs", "fetch", "distinct_urls"),
    Link("fetched ok", "fetch", "fetch"),
    Link("after quality filter", "extract_images", "quality"),
    Link("after exact dedup", "extract_images", "exact_dedup"),
    Link("after perceptual dedup", "extract_images", "perceptual_dedup"),
    Link("embedded", "embed", "images"),
    Link("after semantic dedup", "semantic_dedup", "images"),
    Link("with retrieved texts", "retrieve", "retrieve"),
    Link("with a kept synthetic text", "generate", "similarity_band"),
    Link("in gold.dataset", "balance", "cluster_images"),
)
SENTENCE_LINKS: tuple[Link, ...] = (
    Link("texts", "ingest", "texts"),
    Link("sentence occurrences", "extract_sentences", "empty", "rows_in"),
    Link("after filters", "extract_sentences", "exact_dedup", "rows_in"),
    Link("distinct after exact dedup", "extract_sentences", "exact_dedup"),
    Link("after near dedup", "extract_sentences", "near_dedup"),
    Link("embedded", "embed", "sentences"),
    Link("after semantic dedup", "semantic_dedup", "sentences"),
)


@dataclass(frozen=True)
class Bar:
    """One drawn bar: its label, its count and the funnel row it comes from."""

    label: str
    value: int
    stage: str
    step: str


@dataclass(frozen=True)
class Chain:
    """One panel of the figure: its bars in order, top to bottom."""

    title: str
    bars: tuple[Bar, ...]

    @property
    def linear(self) -> bool:
        """Whether the panel has a linear axis (:func:`linear_axis`); log otherwise."""
        return linear_axis(b.value for b in self.bars)

    def pairs(self) -> list[tuple[str, int]]:
        """``(label, count)`` of every bar, in order."""
        return [(b.label, b.value) for b in self.bars]


def dataset_key(row: Row | None) -> dict[str, Any]:
    """The model key of a gold.dataset row under gold.funnel's column names (empty without a row)."""
    if row is None:
        return {}
    return {funnel: row.get(column) for funnel, column in DATASET_KEY_COLUMNS.items()}


def pick(rows: Sequence[Row], stage: str, step: str, key: Mapping[str, Any]) -> Row | None:
    """The funnel row of ``(stage, step)``; where several models wrote one, the row under ``key`` (the models that
    gold.dataset was made with). None where there is no row, or several and none or more than one fits the key."""
    found = [r for r in rows if r["stage"] == stage and r["step"] == step]
    if len(found) > 1:
        found = [
            r
            for r in found
            if all(r.get(c) is None or key.get(c) is None or r.get(c) == key.get(c) for c in MODEL_COLUMNS)
        ]
    return found[0] if len(found) == 1 else None


def bars_of(rows: Sequence[Row], links: Sequence[Link], key: Mapping[str, Any] | None = None) -> list[Bar]:
    """The bars of ``links`` that gold.funnel ``rows`` have, in the order of ``links``."""
    bars = []
    for link in links:
        row = pick(rows, link.stage, link.step, key or {})
        if row is not None:
            bars.append(Bar(link.label, int(row[link.count]), link.stage, link.step))
    return bars


def image_chain(rows: Sequence[Row], key: Mapping[str, Any] | None = None) -> Chain:
    """Documents through gold.dataset (``IMAGE_LINKS``), then the rows of every balance scale in step order."""
    bars = bars_of(rows, IMAGE_LINKS, key)
    scales = sorted((r for r in rows if r["stage"] == "balance" and SCALE_STEP.fullmatch(r["step"])), key=funnel_order)
    for r in scales:
        match = SCALE_STEP.fullmatch(r["step"])
        assert match is not None
        bars.append(Bar(f"scale {match['name']}", int(r["rows_out"]), r["stage"], r["step"]))
    return Chain("images", tuple(bars))


def sentence_chain(rows: Sequence[Row], key: Mapping[str, Any] | None = None) -> Chain:
    """Texts, sentence occurrences, the filters and dedups, embedded (``SENTENCE_LINKS``)."""
    return Chain("sentences", tuple(bars_of(rows, SENTENCE_LINKS, key)))


def linear_axis(values: Iterable[int]) -> bool:
    """Whether counts fit a linear axis: the largest positive one under ``LINEAR_MAX_RATIO`` times the smallest."""
    positive = [v for v in values if v > 0]
    return not positive or max(positive) < LINEAR_MAX_RATIO * min(positive)


def plot_chains(chains: Sequence[Chain]) -> Any:
    """One panel of horizontal bars per chain that has bars, first bar on top, each labelled with its count; linear x
    where the chain allows (:attr:`Chain.linear`), log otherwise. Scale bars have a colour of their own. Returns the
    pyplot Figure (the caller picks the backend: the report's is Agg, a notebook's its inline one)."""
    import matplotlib.pyplot as plt

    shown = [c for c in chains if c.bars]
    heights = [0.32 * len(c.bars) + 0.9 for c in shown] or [1.0]
    fig, axes = plt.subplots(
        max(1, len(shown)), 1, figsize=(9, sum(heights) + 0.3), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    if not shown:
        axes[0, 0].text(0.5, 0.5, "gold.funnel has no rows of these chains", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for ax, c in zip(axes[:, 0], shown, strict=True):
        values = [b.value for b in c.bars]
        y = list(range(len(values)))
        colors = ["#e6550d" if SCALE_STEP.fullmatch(b.step) else "#2171b5" for b in c.bars]
        ax.barh(y, values, color=colors, height=0.7)
        ax.set_yticks(y, [b.label for b in c.bars], fontsize=8)
        ax.invert_yaxis()
        top = max(values)
        if c.linear:
            ax.set_xlim(0, max(top, 1) * 1.18)
        else:
            ax.set_xscale("log")
            ax.set_xlim(min(v for v in values if v > 0) / 2, top * 4)
        ax.set_title(f"{c.title} ({'linear' if c.linear else 'log'} axis)", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        for yy, v in zip(y, values, strict=True):
            ax.text(v if v > 0 else ax.get_xlim()[0], yy, f" {v:,}", va="center", fontsize=7)
    fig.tight_layout()
    return fig
