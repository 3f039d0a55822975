"""The dataset report: one HTML page with PNG plots and sample pairs, written beside the tables.

``run_report`` writes ``index.html`` into ``report.output`` (default ``<storage.root>/report``) with, as files next
to it (so the page opens from disk, no server):

- ``funnel.png``: rows in and kept per step of every stage in ``gold.funnel`` (the paper's Figure 2);
- ``texts_per_image.png``: how many of text1..text3 and syn_text each gold.dataset row has (every row), and the
  CLIP BPE tokens of its four texts together (a hash sample of ``report.sample_rows`` rows; open_clip's tokenizer,
  whose vocabulary ships with the package);
- ``cluster_sizes.png``: leaf cluster sizes of gold.dataset sorted from the largest, before balancing and in every
  scale, and their max / median;
- ``samples/``: thumbnails of ``report.sample_images`` rows (a hash sample) shown with their four texts.

Everything is computed from aggregates or bounded samples; only those reach the driver. With the demo's
random-weight models the texts, tokens and clusters are meaningless as data; the page says so.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from realsyn.config import Config, ConfigError
from realsyn.contracts import FUNNEL, GOLD_DATASET, RETRIEVED_TEXTS, SCALE_PREFIX, SILVER_IMAGES
from realsyn.tables import Lakehouse
from udfs.balance import max_over_median

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
class ReportSummary:
    """Where the report went and what it shows."""

    page: str
    stages: int
    rows: int
    scales: tuple[tuple[str, int, float], ...]
    sample_images: int

    def __str__(self) -> str:
        scales = ", ".join(f"{n} {rows:,} rows (max/median cluster {r:.2f})" for n, rows, r in self.scales)
        return (
            f"report: {self.page}: funnel of {self.stages} stages, {self.rows:,} gold.dataset rows"
            + (f", scales {scales}" if scales else "")
            + f", {self.sample_images} sample images"
        )


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_funnel(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per stage: rows in (light) and kept (dark) per step, on a log scale."""
    plt = _plt()
    stages: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["stage"], r["step_index"])):
        stages.setdefault(r["stage"], []).append(r)
    n = max(1, len(stages))
    heights = [max(1, len(steps)) * 0.35 + 0.6 for steps in stages.values()] or [1.0]
    fig, axes = plt.subplots(n, 1, figsize=(9, sum(heights) + 0.5), gridspec_kw={"height_ratios": heights})
    axes = np.atleast_1d(axes)
    for ax, (stage, steps) in zip(axes, stages.items(), strict=False):
        y = np.arange(len(steps))[::-1]
        ax.barh(y, [max(s["rows_in"], 0.8) for s in steps], color="#c6dbef", label="rows in")
        ax.barh(y, [max(s["rows_out"], 0.8) for s in steps], color="#2171b5", label="kept")
        ax.set_yticks(y, [s["step"] for s in steps], fontsize=8)
        ax.set_xscale("log")
        ax.set_xlim(left=0.8)  # bars start at the same place, so their lengths compare
        ax.set_title(stage, fontsize=9, loc="left")
        for yy, s in zip(y, steps, strict=True):
            ax.text(max(s["rows_out"], 1), yy, f" {s['rows_out']:,} / {s['rows_in']:,}", va="center", fontsize=7)
    if not stages:
        axes[0].text(0.5, 0.5, "gold.funnel is empty", ha="center")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
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


def plot_cluster_sizes(before: np.ndarray, after: dict[str, np.ndarray], path: Path) -> None:
    """Leaf sizes sorted from the largest: before balancing and per scale (log y)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, sizes in [("before balancing", before), *after.items()]:
        nz = np.sort(sizes[sizes > 0])[::-1]
        if nz.size:
            ax.plot(np.arange(1, nz.size + 1), nz, marker="." if nz.size < 50 else None, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("leaf clusters, largest first")
    ax.set_ylabel("images in the cluster")
    ax.legend(fontsize=8)
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


def _page(
    funnel_rows: list[dict[str, Any]],
    n_rows: int,
    scales: list[tuple[str, int, float]],
    before_ratio: float,
    samples: list[dict[str, Any]],
) -> str:
    esc = html.escape
    funnel_table = "".join(
        f"<tr><td>{esc(r['stage'])}</td><td>{esc(r['step'])}</td><td>{r['rows_in']:,}</td>"
        f"<td>{r['rows_out']:,}</td><td>{r['rows_rejected']:,}</td></tr>"
        for r in sorted(funnel_rows, key=lambda r: (r["stage"], r["step_index"]))
    )
    scale_rows = "".join(
        f"<tr><td>{esc(n)}</td><td>{rows:,}</td><td>{ratio:.2f}</td></tr>" for n, rows, ratio in scales
    )
    cards = []
    for s in samples:
        texts = "".join(f"<dt>{c}</dt><dd>{esc(s[c]) if s.get(c) else '<i>none</i>'}</dd>" for c in TEXT_COLUMNS)
        cards.append(
            f'<figure><img src="{esc(s["thumb"])}" alt="{esc(s["image_id"])}">'
            f'<figcaption><a href="{esc(s["raw_image_url"] or "")}">{esc(s["image_id"])}</a> · leaf '
            f"{s['leaf_id']}<dl>{texts}</dl></figcaption></figure>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>realsyn dataset report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
td:nth-child(n+3) {{ text-align: right; }} .note {{ background: #fff4d6; padding: 0.6em 1em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px; }}
figure {{ margin: 0; border: 1px solid #ddd; padding: 6px; }} figure img {{ max-width: 100%; }}
dt {{ font-weight: bold; font-size: 12px; }} dd {{ margin: 0 0 4px 0; font-size: 12px; }}
</style></head><body>
<h1>realsyn dataset report</h1>
<p class="note">Produced by realsyn. On the demo corpus and in the tests, the embedding, captioning, tagging and
language models are tiny models with random weights: retrieved texts, synthetic texts, token counts and clusters
are then meaningless as data and only show that the pipeline ran end to end.</p>
<h2>Funnel</h2><p>Rows in, kept and rejected per step of every stage (<code>gold.funnel</code>; the paper's
Figure 2).</p>
<img src="funnel.png" alt="funnel of every stage">
<table><tr><th>stage</th><th>step</th><th>in</th><th>kept</th><th>rejected</th></tr>{funnel_table}</table>
<h2>Texts and tokens per image</h2><p>{n_rows:,} rows in <code>gold.dataset</code>.</p>
<img src="texts_per_image.png" alt="texts and tokens per image">
<h2>Cluster sizes before and after balancing</h2>
<p>Max / median leaf size before balancing: {before_ratio:.2f}.</p>
<table><tr><th>scale</th><th>rows</th><th>max / median cluster size</th></tr>{scale_rows}</table>
<img src="cluster_sizes.png" alt="cluster sizes before and after balancing">
<h2>Sample pairs</h2><div class="grid">{"".join(cards)}</div>
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
    funnel_rows = [r.asDict() for r in lakehouse.read(FUNNEL).collect()] if lakehouse.exists(FUNNEL) else []
    dataset = lakehouse.read(GOLD_DATASET)
    scale_cols = [c for c in dataset.columns if c.startswith(SCALE_PREFIX)]

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
    content = lakehouse.read(SILVER_IMAGES).select("image_id", "content")
    samples = []
    for r in picks.join(content, "image_id", "left").orderBy(order).collect():
        row = r.asDict()
        name = f"samples/{row['image_id']}.jpg"
        if row["content"] is not None:
            (out / name).write_bytes(thumbnail(bytes(row["content"])))
            row["thumb"] = name
            samples.append(row)

    plot_funnel(funnel_rows, out / "funnel.png")
    plot_texts(texts_hist, tokens, out / "texts_per_image.png")
    plot_cluster_sizes(before, after, out / "cluster_sizes.png")
    scales = [(name, int(sizes.sum()), max_over_median(sizes)) for name, sizes in after.items()]
    page = _page(funnel_rows, int(before.sum()), scales, max_over_median(before), samples)
    tmp = out / "index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out / "index.html")
    stages = len({r["stage"] for r in funnel_rows})
    return ReportSummary(str(out / "index.html"), stages, int(before.sum()), tuple(scales), len(samples))
