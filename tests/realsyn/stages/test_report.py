"""The report page: the funnel in pipeline order (the paper's Figure 2) from known gold.funnel counts, and in
headless Chromium every plot and sample image loads, the funnel table reads in pipeline order and no card overflows."""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from realsyn.config_sections import Config
from realsyn.contracts import FUNNEL, GOLD_CONCEPT_COUNTS
from realsyn.funnel_figure import STAGE_ORDER
from realsyn.stages.balance import run_balance
from realsyn.stages.report import ConceptHead, ReportSummary, run_report
from realsyn.tables import Lakehouse
from tests.support.gold_data import Img, write_inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Records on the <body>, after the load event: every image's src and natural width (0: it did not load); stage and
# step of every row of the funnel table; per sample card, how many of its elements reach past its right edge.
PROBE = """<script>window.addEventListener('load', () => {
  const put = (name, value) => document.body.setAttribute(name, JSON.stringify(value));
  put('data-images', [...document.images].map(i => [i.getAttribute('src'), i.naturalWidth]));
  put('data-funnel', [...document.querySelectorAll('#funnel tr')].slice(1).map(
    r => [r.cells[0].textContent, r.cells[r.cells.length - 4].textContent]));
  put('data-overflow', [...document.querySelectorAll('figure')].map(f => {
    const right = f.getBoundingClientRect().right;
    return [...f.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > right + 0.5).length;
  }));
});</script>"""

MODEL = "m"
# gold.funnel of a whole run with known counts, as (stage, model_id, step, rows_in, rows_out) in step order per
# stage (model_id "gen": generate's key of make_cfg). Embed also ran another model, whose rows the chain must skip;
# semantic dedup did not run; the sentence side spans more than 1000x (a log axis), the image side less (linear).
RUN = [
    ("ingest", None, "documents", 8, 8),
    ("ingest", None, "texts", 50, 50),
    ("ingest", None, "image_refs", 30, 30),
    ("fetch", None, "distinct_urls", 30, 25),
    ("fetch", None, "fetch", 25, 20),
    ("extract_images", None, "quality", 20, 15),
    ("extract_images", None, "exact_dedup", 15, 12),
    ("extract_images", None, "perceptual_dedup", 12, 11),
    ("extract_sentences", None, "empty", 120_000, 110_000),
    ("extract_sentences", None, "cat", 110_000, 90_000),
    ("extract_sentences", None, "exact_dedup", 90_000, 60),
    ("extract_sentences", None, "near_dedup", 60, 45),
    ("embed", MODEL, "images", 11, 10),
    ("embed", MODEL, "sentences", 45, 44),
    ("embed", "other", "images", 11, 3),
    ("embed", "other", "sentences", 45, 1),
    ("cluster_sentences", MODEL, "usable_embedding", 44, 44),
    ("retrieve", MODEL, "usable_embedding", 10, 10),
    ("retrieve", MODEL, "retrieve", 10, 9),
    ("cluster_images", MODEL, "usable_embedding", 10, 10),
    ("generate", "gen", "retrieved_text", 9, 9),
    ("generate", "gen", "caption", 9, 9),
    ("generate", "gen", "llm_rewrite", 9, 8),
    ("generate", "gen", "similarity_band", 8, 5),
    ("balance", None, "synthetic_text", 5, 5),
    ("balance", None, "retrieved_text", 5, 5),
    ("balance", None, "cluster_images", 5, 5),
    ("balance", None, "scale[one]", 5, 2),
]
IMAGE_CHAIN = [
    ("documents", 8),
    ("image references", 30),
    ("distinct URLs", 25),
    ("fetched ok", 20),
    ("after quality filter", 15),
    ("after exact dedup", 12),
    ("after perceptual dedup", 11),
    ("embedded", 10),
    ("with retrieved texts", 9),
    ("with a kept synthetic text", 5),
    ("in gold.dataset", 5),
    ("scale one", 2),
]
SENTENCE_CHAIN = [
    ("texts", 50),
    ("sentence occurrences", 120_000),
    ("after filters", 90_000),
    ("distinct after exact dedup", 60),
    ("after near dedup", 45),
    ("embedded", 44),
]


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def probe(page: Path, html_text: str | None = None) -> dict[str, Any]:
    """What Chromium finds on ``page`` (or on ``html_text`` put in its place), loaded from disk: see PROBE."""
    probed = page.with_name("_probe.html")
    text = html_text if html_text is not None else page.read_text(encoding="utf-8")
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--window-size=1200,1600", "--dump-dom", probed.as_uri())
    probed.unlink()
    found = {m[1]: json.loads(html.unescape(m[2])) for m in re.finditer(r'data-(\w+)="([^"]*)"', dom)}
    assert {"images", "funnel", "overflow"} <= set(found), "the probe did not run"
    return found


# gold.concept_counts of the entries scale "meta": 200 entries with Zipf counts before, capped at 20 after.
CONCEPT_COUNTS = [(f"entry{i}", 1000 // (i + 1), min(20, 1000 // (i + 1))) for i in range(200)]


def make_cfg(lakehouse: Lakehouse) -> Config:
    vocabulary = Path(lakehouse.storage.root or "") / "entries.txt"
    vocabulary.parent.mkdir(parents=True, exist_ok=True)
    vocabulary.write_text("two\nthree\n")
    scales: dict[str, Any] = {"one": {"cap": 1}, "meta": {"by": "entries", "t": 2, "vocabulary": str(vocabulary)}}
    return Config.model_validate(
        {
            "storage": {"root": lakehouse.storage.root},
            "embed": {"model": MODEL},
            "generate": {"captioner": "cap", "llm": "llm", "prompt_version": "v1"},
            "balance": {"scales": scales},
            "report": {"sample_images": 3},
        }
    )


def report_on_a_known_run(lakehouse: Lakehouse) -> ReportSummary:
    """Five images in two leaves through balance (scale one: a cap of 1), then gold.funnel replaced by RUN written
    in shuffled order, then the report. Image ids are 64 hex digits, with no place to break a line."""
    cfg = make_cfg(lakehouse)
    imgs = [
        Img(
            hashlib.sha256(str(n).encode()).hexdigest(),
            [("d", n, f"http://x/{n}.jpg")],
            n % 2,
            [f"text one {n} " + "a long retrieved sentence " * 6, "two", "three"],
            f"syn <{n}>",
            seed=n,
        )
        for n in range(5)
    ]
    write_inputs(lakehouse, cfg, imgs, leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    rows: list[tuple[Any, ...]] = []
    for stage, model, step, rows_in, rows_out in RUN:
        model_id = MODEL if model == "gen" else model
        generation = ("cap", "llm", "v1") if model == "gen" else (None, None, None)
        index = sum(1 for r in rows if r[0] == stage and r[1] == model_id)
        rows.append((stage, model_id, *generation, index, step, rows_in, rows_out, rows_in - rows_out))
    random.Random(0).shuffle(rows)
    lakehouse.overwrite(FUNNEL, lakehouse.spark.createDataFrame(rows, FUNNEL.schema))
    concepts = [("meta", "entries", c, i + 1, before, after) for i, (c, before, after) in enumerate(CONCEPT_COUNTS)]
    lakehouse.overwrite(GOLD_CONCEPT_COUNTS, lakehouse.spark.createDataFrame(concepts, GOLD_CONCEPT_COUNTS.schema))
    return run_report(lakehouse, cfg)


def test_the_report_draws_both_chains_in_pipeline_order(lakehouse: Lakehouse) -> None:
    summary = report_on_a_known_run(lakehouse)
    image, sentence = summary.chains
    assert image.pairs() == IMAGE_CHAIN  # semantic dedup left out; embed of the dataset's model, not "other"
    assert sentence.pairs() == SENTENCE_CHAIN
    assert image.linear and not sentence.linear  # 30 / 2 vs 120,000 / 44
    assert summary.stages == 10 and summary.funnel_steps == len(RUN)
    assert summary.rows == 5 and summary.sample_images == 3 and summary.scales[0] == ("one", 2, 1.0)
    # The top 1% of 200 entries is the two largest: 1000 + 500 matches before, 20 + 20 after.
    before, after = [c[1] for c in CONCEPT_COUNTS], [c[2] for c in CONCEPT_COUNTS]
    assert summary.concept_scales == (ConceptHead("meta", "entries", 200, 1500 / sum(before), 40 / sum(after)),)
    assert "meta 25.9% -> 1.7% of matches in the top 1% of 200 concepts" in str(summary)
    assert str(summary).startswith(f"report: {summary.page}: funnel of 10 stages in pipeline order (28 steps; ")
    assert "figure: images 12 bars (linear axis), sentences 6 bars (log axis))" in str(summary)

    text = Path(summary.page).read_text(encoding="utf-8")
    table = text[text.index('<table id="funnel">') : text.index("</table>", text.index('<table id="funnel">'))]
    head = re.findall(r"<th>(\w+)</th>", table)
    assert head == ["stage", "model_id", "captioner", "llm", "prompt_version", "step", "in", "kept", "rejected"]
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", r) for r in table.split("<tr>")[2:]]
    expected_order = sorted(
        RUN, key=lambda r: (STAGE_ORDER.index(r[0]), str(r[1] if r[1] != "gen" else MODEL), RUN.index(r))
    )
    assert [(c[0], c[5]) for c in cells] == [(r[0], r[2]) for r in expected_order]
    assert cells[0] == ["ingest", "", "", "", "", "documents", "8", "8", "0"]
    assert ["generate", MODEL, "cap", "llm", "v1", "llm_rewrite", "9", "8", "1"] in cells
    assert ["extract_sentences", "", "", "", "", "empty", "120,000", "110,000", "10,000"] in cells


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package `chromium`) is not installed")
def test_report_page_loads_every_image(lakehouse: Lakehouse) -> None:
    summary = report_on_a_known_run(lakehouse)
    page = Path(summary.page)
    assert page == Path(lakehouse.storage.root or "").resolve() / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert "random weights" in text and "syn &lt;" in text  # texts are escaped

    found = probe(page)
    srcs = [src for src, _ in found["images"]]
    assert srcs[:4] == ["funnel.png", "texts_per_image.png", "cluster_sizes.png", "concepts.png"]
    assert len([s for s in srcs if s.startswith("samples/")]) == 3
    assert all(width > 0 for _, width in found["images"]), found["images"]
    # The funnel as the browser shows it: stages in pipeline order, each stage's steps in order.
    stages = [stage for stage, _ in found["funnel"]]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
        s for s in STAGE_ORDER if s in {r[0] for r in RUN}
    ]
    assert found["funnel"][:3] == [["ingest", "documents"], ["ingest", "texts"], ["ingest", "image_refs"]]
    assert found["funnel"][-1] == ["balance", "scale[one]"]  # RUN's funnel: balance's own rows were replaced
    assert found["overflow"] == [0, 0, 0], "a sample card's content reaches past its edge"

    # The probe can fail: a missing file reports width 0, and an unbreakable id overflows a card without the CSS.
    (page.parent / "cluster_sizes.png").rename(page.parent / "moved.png")
    assert dict(map(tuple, probe(page)["images"]))["cluster_sizes.png"] == 0
    (page.parent / "moved.png").rename(page.parent / "cluster_sizes.png")
    assert "overflow-wrap: anywhere;" in text
    assert all(n > 0 for n in probe(page, text.replace("overflow-wrap: anywhere;", ""))["overflow"])

    shot = page.parent / "screenshot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # not a blank page
