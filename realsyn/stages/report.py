"""The dataset report: one HTML page with PNG plots and sample pairs, written beside the tables.

``run_report`` writes ``index.html`` into ``report.output`` (default ``<storage.root>/report``) with, as files next
to it (so the page opens from disk, no server):

- ``funnel.png``: the paper's Figure 2 from ``gold.funnel``: the image chain (documents, references, fetched, after
  each filter and dedup, embedded, retrieved, with a synthetic text, each balance scale) and the sentence chain
  (texts, occurrences, filters, dedups, embedded) as bars in pipeline order (``realsyn.funnel_figure``); the page's
  table lists every funnel row in the same order, with the models of the stages that ran some;
- ``texts_per_image.png``: how many of text1..text3 and syn_text each gold.dataset row has (every row), and the
  CLIP BPE tokens of its four texts together (a hash sample of ``report.sample_rows`` rows; open_clip's tokenizer,
  whose vocabulary ships with the package);
- ``cluster_sizes.png``: leaf cluster sizes of gold.dataset sorted from the largest, before balancing (a wide light
  line) and in every scale (a narrow line with a marker of its own), so that a scale equal to "before" still shows
  both; and their max / median;
- ``concepts.png`` (when a scale balances by entries or concepts): pairs per concept of ``gold.concept_counts`` by
  rank, log-log, before and after each such scale; the table beside it gives the share of matches that fall in the
  most frequent 1% of concepts before and after (a Zipf head holds much of it, a flat spread about 1%);
- ``samples/``: thumbnails of ``report.sample_images`` rows (a hash sample) shown with their four texts.

Everything is computed from aggregates or bounded samples; only those reach the driver. With the demo's
random-weight models the texts, tokens and clusters are meaningless as data; the page says so.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from realsyn.concept_sampling import concept_distributions
from realsyn.config import ConfigError
from realsyn.config_sections import Config
from realsyn.contracts import (
    FUNNEL,
    GOLD_DATASET,
    RETRIEVED_TEXTS,
    SCALE_PREFIX,
    SILVER_IMAGES,
    scale_column,
)
from realsyn.funnel_figure import (
    DATASET_KEY_COLUMNS,
    MODEL_COLUMNS,
    Chain,
    dataset_key,
    image_chain,
    in_pipeline_order,
    linear_axis,
    plot_chains,
    sentence_chain,
)
from realsyn.tables import Lakehouse
from udfs.balance import max_over_median
from udfs.concepts import head_share

TEXT_COLUMNS = [f"text{r}" for r in range(1, RETRIEVED_TEXTS + 1)] + ["syn_text"]
THUMBNAIL_PX = 256


def report_root(cfg: Config) -> Path:
    """Folder of the report: ``report.output``, else ``<storage.root>/report``."""
    if cfg.report.output:
        root = cfg.report.output
    elif cfg.storage.root is None or "://" in cfg.storage.root:
        raise ConfigError("report.output: set a local folder when tables are not in a local storage.root")
    else:
        root = f"{cfg.storage.root.rstrip('/')}/report"
    if "://" in root:
        raise ConfigError(f"report.output: must be a local folder (the page links its images as files), got {root}")
    return Path(root).resolve()


@dataclass(frozen=True)
class ConceptHead:
    """One entries / concepts scale: concepts with a match, and the top 1%'s share of matches before and after."""

    scale: str
    by: str
    concepts: int
    before: float
    after: float


@dataclass(frozen=True)
class ReportSummary:
    """Where the report went and what it shows, counted from what was drawn."""

    page: str
    stages: int  # stages of the funnel table, drawn in pipeline order
    funnel_steps: int  # rows of the funnel table
    chains: tuple[Chain, ...]  # the panels of funnel.png as drawn
    rows: int
    scales: tuple[tuple[str, int, float], ...]
    sample_images: int
    concept_scales: tuple[ConceptHead, ...] = ()

    def __str__(self) -> str:
        scales = ", ".join(f"{n} {rows:,} rows (max/median cluster {r:.2f})" for n, rows, r in self.scales)
        heads = ", ".join(
            f"{c.scale} {c.before:.1%} -> {c.after:.1%} of matches in the top 1% of {c.concepts:,} concepts"
            for c in self.concept_scales
        )
        figure = ", ".join(
            f"{c.title} {len(c.bars)} bars ({'linear' if c.linear else 'log'} axis)" for c in self.chains
        )
        return (
            f"report: {self.page}: funnel of {self.stages} stages in pipeline order ({self.funnel_steps} steps; "
            f"figure: {figure}), {self.rows:,} gold.dataset rows"
            + (f", scales {scales}" if scales else "")
            + (f", concepts: {heads}" if heads else "")
            + f", {self.sample_images} sample images"
        )


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_funnel(chains: Sequence[Chain], path: Path) -> None:
    """The paper's Figure 2: the image chain over the sentence chain (``realsyn.funnel_figure.plot_chains``)."""
    plt = _plt()
    fig = plot_chains(chains)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_texts(texts_hist: dict[int, int], tokens: list[int], path: Path) -> None:
    """Texts per image (every row) and tokens per image (a sample), side by side."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    ks = list(range(len(TEXT_COLUMNS) + 1))
    left.bar(ks, [texts_hist.get(k, 0) for k in ks], color="#2171b5")
    left.set_xlabel("non-empty texts per image (text1..text3, syn_text)")
    left.set_ylabel("images")
    if tokens:
        right.hist(tokens, bins=min(40, max(5, len(set(tokens)))), color="#6baed6")
    right.set_xlabel(f"CLIP BPE tokens per image, four texts ({len(tokens):,} sampled rows)")
    right.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# Scales after "before balancing": colour and marker of each, in turn.
SCALE_STYLES = (("#08519c", "s"), ("#e6550d", "^"), ("#31a354", "D"), ("#756bb1", "v"), ("#636363", "x"))
MARKERS_UP_TO = 60  # leaves per series drawn with markers; more draw as lines alone


def plot_cluster_sizes(before: np.ndarray, after: dict[str, np.ndarray], path: Path) -> None:
    """Leaf sizes sorted from the largest, each leaf a flat step one rank wide: before balancing a wide light line
    under every scale's narrow line with a marker of its own, so series that coincide all stay visible (a single leaf
    is a segment, not a dot). Linear y from 0 where the sizes allow (the funnel's rule), log otherwise; integer
    ticks and limits that leave room even when every leaf has the same size."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
    series = [
        (label, np.sort(sizes[sizes > 0])[::-1]) for label, sizes in [("before balancing", before), *after.items()]
    ]
    drawn = [(label, nz) for label, nz in series if nz.size]
    for i, (label, nz) in enumerate(series):
        if not nz.size:
            continue
        x = np.arange(1, nz.size + 1)
        leaves = "leaf" if nz.size == 1 else "leaves"
        text = f"{label}: {nz.size:,} {leaves}, {int(nz.sum()):,} images, max/median {max_over_median(nz):.2f}"
        if i == 0:
            color, marker, lw, ms = "#9ecae1", "o", 7.0, 12.0
        else:
            color, marker = SCALE_STYLES[(i - 1) % len(SCALE_STYLES)]
            lw, ms = 1.6, 6.0
        ax.stairs(nz, np.arange(0.5, nz.size + 1), baseline=None, color=color, lw=lw, zorder=1 + i)
        ax.plot(x, nz, ls="none", marker=marker if nz.size <= MARKERS_UP_TO else None, ms=ms, color=color, zorder=1 + i)
        ax.plot([], [], color=color, lw=lw, marker=marker, ms=ms * 0.7, label=text)  # the legend's line
    values = np.concatenate([nz for _, nz in drawn]) if drawn else np.array([1])
    top = int(values.max())
    if linear_axis(values.tolist()):
        ax.set_ylim(0, top * 1.15 + 0.5)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    else:
        ax.set_yscale("log")
        ax.set_ylim(values.min() / 1.6, top * 1.6)
    widest = max((nz.size for _, nz in drawn), default=1)
    ax.set_xlim(0.5, widest + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("leaf clusters, largest first")
    ax.set_ylabel("images in the cluster")
    if drawn:
        fig.legend(fontsize=8, loc="outside upper center", ncol=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "gold.dataset is empty", ha="center", transform=ax.transAxes)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_concepts(distributions: dict[str, tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """Pairs per concept by rank, log-log, before and after: one panel per entries / concepts scale."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(distributions), figsize=(4.5 * len(distributions), 3.4), squeeze=False)
    for ax, (name, (by, before, after)) in zip(axes[0], distributions.items(), strict=True):
        for label, counts, color, width in (("before", before, "#9ecae1", 4.0), ("after", after, "#08519c", 1.6)):
            nz = np.sort(counts[counts > 0])[::-1]
            share = head_share(nz)
            ax.plot(np.arange(1, nz.size + 1), nz, color=color, lw=width, label=f"{label}: top 1% hold {share:.0%}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{name} (by {by})", fontsize=10)
        ax.set_xlabel("concept rank")
        ax.set_ylabel("pairs with the concept")
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def thumbnail(content: bytes) -> bytes:
    """A JPEG of at most THUMBNAIL_PX on the long side."""
    from PIL import Image

    with Image.open(io.BytesIO(content)) as im:
        im.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def token_counts(rows: list[dict[str, Any]]) -> list[int]:
    """CLIP BPE tokens of the four texts of each row (open_clip's SimpleTokenizer, no truncation)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    return [sum(len(tok.encode(r[c])) for c in TEXT_COLUMNS if r.get(c)) for r in rows]


def funnel_table(rows: list[dict[str, Any]]) -> str:
    """The funnel rows as an HTML table in pipeline order; a model column only where some row names a model."""
    esc = html.escape
    models = [c for c in MODEL_COLUMNS if any(r.get(c) is not None for r in rows)]
    head = "".join(f"<th>{c}</th>" for c in ["stage", *models, "step"]) + "<th>in</th><th>kept</th><th>rejected</th>"
    body = "".join(
        f"<tr><td>{esc(r['stage'])}</td>"
        + "".join(f"<td>{esc(str(r[c])) if r.get(c) is not None else ''}</td>" for c in models)
        + f"<td>{esc(r['step'])}</td><td class=n>{r['rows_in']:,}</td><td class=n>{r['rows_out']:,}</td>"
        f"<td class=n>{r['rows_rejected']:,}</td></tr>"
        for r in rows
    )
    return f'<table id="funnel"><tr>{head}</tr>{body}</table>'


def _page(
    funnel_rows: list[dict[str, Any]],
    n_rows: int,
    scales: list[tuple[str, int, float]],
    before_ratio: float,
    samples: list[dict[str, Any]],
    heads: Sequence[ConceptHead] = (),
) -> str:
    esc = html.escape
    concepts = ""
    if heads:
        head_rows = "".join(
            f"<tr><td>{esc(c.scale)}</td><td>{esc(c.by)}</td><td class=n>{c.concepts:,}</td>"
            f"<td class=n>{c.before:.1%}</td><td class=n>{c.after:.1%}</td></tr>"
            for c in heads
        )
        concepts = f"""<h2>Concepts before and after balancing</h2>
<p>Pairs per concept (vocabulary entries matched in the texts, or top tags), most frequent first, from
<code>gold.concept_counts</code>; and the share of all matches held by the most frequent 1% of concepts.</p>
<table><tr><th>scale</th><th>by</th><th>concepts</th><th>top 1% before</th><th>top 1% after</th></tr>{head_rows}
</table>
<img src="concepts.png" alt="pairs per concept by rank, before and after balancing">
"""
    scale_rows = "".join(
        f"<tr><td>{esc(n)}</td><td class=n>{rows:,}</td><td class=n>{ratio:.2f}</td></tr>" for n, rows, ratio in scales
    )
    cards = []
    for s in samples:
        texts = "".join(f"<dt>{c}</dt><dd>{esc(s[c]) if s.get(c) else '<i>none</i>'}</dd>" for c in TEXT_COLUMNS)
        cards.append(
            f'<figure><img src="{esc(s["thumb"])}" alt="{esc(s["image_id"])}">'
            f'<figcaption><a href="{esc(s["raw_image_url"] or "")}" title="{esc(s["image_id"])}">'
            f"{esc(s['image_id'])}</a> · leaf {s['leaf_id']}<dl>{texts}</dl></figcaption></figure>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>realsyn dataset report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
img {{ max-width: 100%; height: auto; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }} .note {{ background: #fff4d6; padding: 0.6em 1em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px; }}
figure {{ margin: 0; border: 1px solid #ddd; padding: 6px; min-width: 0; overflow-wrap: anywhere; }}
figure img {{ display: block; margin: 0 auto 4px; }}
dt {{ font-weight: bold; font-size: 12px; }} dd {{ margin: 0 0 4px 0; font-size: 12px; }}
</style></head><body>
<h1>realsyn dataset report</h1>
<p class="note">Produced by realsyn. On the demo corpus and in the tests, the embedding, captioning, tagging and
language models are tiny models with random weights: retrieved texts, synthetic texts, token counts and clusters
are then meaningless as data and only show that the pipeline ran end to end.</p>
<h2>Funnel</h2><p>The paper's Figure 2 from <code>gold.funnel</code>: images and sentences left after each step, in
pipeline order (steps that did not run are left out). Below it, rows in, kept and rejected per step of every stage,
in pipeline order.</p>
<img src="funnel.png" alt="funnel: images and sentences after each step">
{funnel_table(funnel_rows)}
<h2>Texts and tokens per image</h2><p>{n_rows:,} rows in <code>gold.dataset</code>.</p>
<img src="texts_per_image.png" alt="texts and tokens per image">
<h2>Cluster sizes before and after balancing</h2>
<p>Max / median leaf size before balancing: {before_ratio:.2f}.</p>
<table><tr><th>scale</th><th>rows</th><th>max / median cluster size</th></tr>{scale_rows}</table>
<img src="cluster_sizes.png" alt="cluster sizes before and after balancing">
{concepts}<h2>Sample pairs</h2><div class="grid">{"".join(cards)}</div>
</body></html>
"""


def run_report(lakehouse: Lakehouse, cfg: Config) -> ReportSummary:
    """Write the report page and its plots for the current gold tables."""
    out = report_root(cfg)
    if not lakehouse.exists(GOLD_DATASET):
        raise RuntimeError(f"{GOLD_DATASET} does not exist: run the balance stage (realsyn-balance) first")
    rcfg = cfg.report
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    funnel = [r.asDict() for r in lakehouse.read(FUNNEL).collect()] if lakehouse.exists(FUNNEL) else []
    funnel_rows = [dict(r) for r in in_pipeline_order(funnel)]
    dataset = lakehouse.read(GOLD_DATASET)
    scale_cols = [c for c in dataset.columns if c.startswith(SCALE_PREFIX)]
    # The models gold.dataset was made with pick the funnel rows of stages that several models ran.
    first = dataset.select(*DATASET_KEY_COLUMNS.values()).limit(1).collect()
    key = dataset_key(first[0].asDict() if first else None)
    chains = (image_chain(funnel_rows, key), sentence_chain(funnel_rows, key))

    n_texts = F.lit(0)
    for c in TEXT_COLUMNS:
        n_texts = n_texts + (F.col(c).isNotNull() & (F.length(c) > 0)).cast("int")
    texts_hist = {int(r["n"]): int(r["count"]) for r in dataset.groupBy(n_texts.alias("n")).count().collect()}
    per_leaf = dataset.groupBy("leaf_id").agg(
        F.count("*").alias("_all"), *[F.sum(F.col(c).cast("long")).alias(c) for c in scale_cols]
    )
    leaves = per_leaf.collect()
    before = np.array([int(r["_all"]) for r in leaves], np.int64)
    after = {c[len(SCALE_PREFIX) :]: np.array([int(r[c] or 0) for r in leaves], np.int64) for c in scale_cols}
    order = F.xxhash64(F.col("image_id"), F.lit(rcfg.seed))
    sampled = [r.asDict() for r in dataset.select(*TEXT_COLUMNS).orderBy(order).limit(rcfg.sample_rows).collect()]
    tokens = token_counts(sampled)

    picks = (
        dataset.orderBy(order).limit(rcfg.sample_images).select("image_id", "raw_image_url", "leaf_id", *TEXT_COLUMNS)
    )
    # Only the picked images' bytes leave the scan: the picks (a few dozen ids) are broadcast to it.
    content = (
        lakehouse.read(SILVER_IMAGES)
        .select("image_id", "content")
        .join(F.broadcast(picks.select("image_id")), "image_id", "left_semi")
    )
    samples = []
    for r in picks.join(content, "image_id", "left").orderBy(order).collect():
        row = r.asDict()
        name = f"samples/{row['image_id']}.jpg"
        if row["content"] is not None:
            (out / name).write_bytes(thumbnail(bytes(row["content"])))
            row["thumb"] = name
            samples.append(row)

    plot_funnel(chains, out / "funnel.png")
    plot_texts(texts_hist, tokens, out / "texts_per_image.png")
    plot_cluster_sizes(before, after, out / "cluster_sizes.png")
    scales = [(name, int(sizes.sum()), max_over_median(sizes)) for name, sizes in after.items()]
    distributions = {n: d for n, d in concept_distributions(lakehouse).items() if scale_column(n) in scale_cols}
    heads = [
        ConceptHead(n, by, int((b > 0).sum()), head_share(b), head_share(a)) for n, (by, b, a) in distributions.items()
    ]
    if distributions:
        plot_concepts(distributions, out / "concepts.png")
    page = _page(funnel_rows, int(before.sum()), scales, max_over_median(before), samples, heads)
    tmp = out / "index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "index.html")
    return ReportSummary(
        page=str(out / "index.html"),
        stages=len({r["stage"] for r in funnel_rows}),
        funnel_steps=len(funnel_rows),
        chains=chains,
        rows=int(before.sum()),
        scales=tuple(scales),
        sample_images=len(samples),
        concept_scales=tuple(heads),
    )
