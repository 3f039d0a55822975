"""The paper's Figure 2 from gold.funnel rows: pipeline order, the two chains, the axis choice (plain Python)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from realsyn.funnel_figure import (
    STAGE_ORDER,
    Bar,
    Chain,
    dataset_key,
    image_chain,
    in_pipeline_order,
    linear_axis,
    plot_chains,
    sentence_chain,
)
from realsyn.pipeline import STAGE_NAMES


def row(stage: str, index: int, step: str, rows_in: int, rows_out: int, model: str | None = None) -> dict[str, Any]:
    """A gold.funnel row (captioner, llm and prompt version only for generate)."""
    gen = stage == "generate"
    return {
        "stage": stage,
        "model_id": model,
        "captioner": "cap" if gen else None,
        "llm": "llm" if gen else None,
        "prompt_version": "v1" if gen else None,
        "step_index": index,
        "step": step,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_in - rows_out,
    }


def test_the_stage_order_is_the_pipelines() -> None:
    assert STAGE_ORDER == STAGE_NAMES


def test_rows_sort_by_pipeline_order_then_models_then_step_index() -> None:
    rows = [
        row("balance", 0, "synthetic_text", 5, 5),
        row("embed", 1, "sentences", 9, 9, "m"),
        row("report_extra", 0, "x", 1, 1),  # unknown stages go last
        row("ingest", 2, "image_refs", 7, 7),
        row("embed", 0, "images", 4, 4, "m"),
        row("ingest", 0, "documents", 3, 3),
        row("embed", 0, "images", 4, 2, "a_other"),
    ]
    order = [(r["stage"], r["model_id"], r["step"]) for r in in_pipeline_order(rows)]
    assert order == [
        ("ingest", None, "documents"),
        ("ingest", None, "image_refs"),
        ("embed", "a_other", "images"),
        ("embed", "m", "images"),
        ("embed", "m", "sentences"),
        ("balance", None, "synthetic_text"),
        ("report_extra", None, "x"),
    ]


def test_chains_follow_the_pipeline_leave_out_missing_steps_and_pick_the_datasets_models() -> None:
    rows = [
        row("balance", 4, "scale[big]", 6, 6),
        row("balance", 3, "scale[small]", 6, 2),
        row("balance", 2, "cluster_images", 6, 6),
        row("generate", 3, "similarity_band", 9, 6, "m"),
        row("retrieve", 1, "retrieve", 10, 9, "m"),
        row("embed", 0, "images", 11, 10, "m"),
        row("embed", 0, "images", 11, 3, "other"),  # another model's funnel: not the dataset's
        row("embed", 1, "sentences", 40, 40, "m"),
        row("extract_images", 0, "quality", 20, 15),
        row("extract_images", 1, "exact_dedup", 15, 11),  # no perceptual_dedup step, no semantic_dedup stage
        row("fetch", 1, "fetch", 25, 20),
        row("fetch", 0, "distinct_urls", 30, 25),
        row("ingest", 2, "image_refs", 30, 30),
        row("ingest", 1, "texts", 50, 50),
        row("ingest", 0, "documents", 8, 8),
        row("extract_sentences", 0, "empty", 200, 190),
        row("extract_sentences", 1, "emoji", 190, 150),
        row("extract_sentences", 2, "exact_dedup", 150, 60),
        row("extract_sentences", 3, "near_dedup", 60, 40),
    ]
    key = dataset_key({"model_id": "m", "captioner_id": "cap", "llm_id": "llm", "prompt_version": "v1"})
    assert image_chain(rows, key).pairs() == [
        ("documents", 8),
        ("image references", 30),
        ("distinct URLs", 25),
        ("fetched ok", 20),
        ("after quality filter", 15),
        ("after exact dedup", 11),
        ("embedded", 10),
        ("with retrieved texts", 9),
        ("with a kept synthetic text", 6),
        ("in gold.dataset", 6),
        ("scale small", 2),
        ("scale big", 6),
    ]
    assert sentence_chain(rows, key).pairs() == [
        ("texts", 50),
        ("sentence occurrences", 200),
        ("after filters", 150),
        ("distinct after exact dedup", 60),
        ("after near dedup", 40),
        ("embedded", 40),
    ]
    # Two models and no key to choose between them: the step is left out, not guessed.
    assert ("embedded", 10) not in image_chain(rows).pairs()


def test_linear_axis_unless_the_counts_span_a_thousandfold() -> None:
    assert linear_axis([999, 1, 0])  # zeros do not count
    assert not linear_axis([1000, 1])
    assert linear_axis([])
    assert linear_axis([0, 0])


def test_each_chain_is_drawn_on_its_own_axis_in_order() -> None:
    wide = Chain("images", (Bar("documents", 2_000_000, "ingest", "documents"), Bar("s", 5, "balance", "scale[s]")))
    narrow = Chain("sentences", (Bar("texts", 500, "ingest", "texts"), Bar("embedded", 3, "embed", "sentences")))
    fig = plot_chains([wide, Chain("empty", ()), narrow])
    try:
        assert [ax.get_xscale() for ax in fig.axes] == ["log", "linear"]
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["documents", "s"]
        assert fig.axes[0].yaxis_inverted()  # the first link on top
        assert [t.get_text() for t in fig.axes[1].texts] == [" 500", " 3"]
    finally:
        plt.close(fig)
