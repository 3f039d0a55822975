"""Semantic dedup as a stage of its own against the way it ran before: rerunning both extraction stages with a
semantic step inside, on the same lake, side by side.

The demo corpus of N documents goes through ingest, fetch and both extraction stages; then every extracted image and
sentence gets a planted embedding of a model the registry does not know ("planted": random unit vectors, 5% of
them copies of another row's vector with a little noise, so semantic dedup has real work and a known answer). Timed:

- after (this layout): ``run_semantic_dedup`` on the extracted tables;
- before (what the ``semantic_dedup`` stage did until it became a stage of its own): rerun ``run_extract_images``
  and ``run_extract_sentences`` from bronze, then the same semantic step.

Prints the rows, both times and, last, ``semantic_dedup_after_over_before: <after / before>``. ``--quick``: 2,000
documents instead of 100,000. The embeddings are planted, so only the time and the number of duplicates found are
measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from realsyn.config import load_config  # noqa: E402
from realsyn.contracts import (  # noqa: E402
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCES,
    Table,
)
from realsyn.demo_corpus import generate, with_demo_inputs  # noqa: E402
from realsyn.spark import get_spark  # noqa: E402
from realsyn.stages.extract_images import run_extract_images  # noqa: E402
from realsyn.stages.extract_sentences import run_extract_sentences  # noqa: E402
from realsyn.stages.fetch import run_fetch  # noqa: E402
from realsyn.stages.ingest import run_ingest  # noqa: E402
from realsyn.stages.semantic_dedup import run_semantic_dedup  # noqa: E402
from realsyn.tables import Lakehouse  # noqa: E402

DIM = 32
PLANTED_SHARE = 0.05


def plant(lakehouse: Lakehouse, rows: Table, output: Table, id_col: str, seed: int) -> int:
    """Write a planted embedding for every row of ``rows``; return how many are near-copies of another."""
    ids = sorted(r[0] for r in lakehouse.read(rows).select(id_col).collect())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(ids), DIM)).astype(np.float32)
    copies = rng.choice(len(ids), size=int(len(ids) * PLANTED_SHARE), replace=False) if len(ids) > 1 else []
    for i in copies:
        x[i] = x[(i + 1) % len(ids)] + 0.001 * rng.standard_normal(DIM).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frame = lakehouse.spark.createDataFrame(
        [(i, "planted", v.tolist()) for i, v in zip(ids, x, strict=True)], output.schema
    )
    lakehouse.overwrite(output, frame)
    return len(copies)


def timed(label: str, fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    seconds = time.perf_counter() - t0
    print(f"  {label:<52}{seconds:>8.1f} s")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 documents instead of 100,000")
    parser.add_argument("--documents", type=int, default=100_000)
    args = parser.parse_args()
    n = 2_000 if args.quick else args.documents
    with tempfile.TemporaryDirectory(prefix="realsyn-semdedup-") as tmp:
        work = Path(tmp)
        sets = [f"storage.root={work / 'lake'}", f"demo.output={work / 'raw'}", f"demo.documents={n}"]
        sets += [
            "demo.kind=photos",
            f"demo.synthetic_images={n // 5}",
            'spark.conf.spark.ui.showConsoleProgress="false"',
        ]
        cfg = with_demo_inputs(load_config(REPO / "conf" / "local.yaml", sets))
        generate(cfg.demo)
        spark = get_spark(cfg.spark)
        spark.sparkContext.setLogLevel("WARN")
        lakehouse = Lakehouse(spark, cfg.storage)
        print(f"{n:,} documents (demo corpus), local Spark {spark.sparkContext.master}:")
        timed("ingest + fetch", lambda: (run_ingest(lakehouse, cfg), run_fetch(lakehouse, cfg)))
        timed("extract_images + extract_sentences (first run)", lambda: (
            run_extract_images(lakehouse, cfg), run_extract_sentences(lakehouse, cfg)))  # fmt: skip
        n_images, n_sentences = lakehouse.read(SILVER_IMAGES).count(), lakehouse.read(SILVER_SENTENCES).count()
        planted = plant(lakehouse, SILVER_IMAGES, SILVER_IMAGE_EMBEDDINGS, "image_id", 0)
        planted += plant(lakehouse, SILVER_SENTENCES, SILVER_SENTENCE_EMBEDDINGS, "sentence_id", 1)
        print(f"  {n_images:,} images and {n_sentences:,} sentences extracted, {planted:,} planted near-copies")

        after = timed("after: semantic_dedup stage", lambda: run_semantic_dedup(lakehouse, cfg))
        removed = (
            n_images + n_sentences - lakehouse.read(SILVER_IMAGES).count() - lakehouse.read(SILVER_SENTENCES).count()
        )
        rerun = timed("before: extraction rerun from bronze", lambda: (
            run_extract_images(lakehouse, cfg), run_extract_sentences(lakehouse, cfg)))  # fmt: skip
        step = timed("before: its semantic step", lambda: run_semantic_dedup(lakehouse, cfg))
        before = rerun + step
        kept = lakehouse.read(SILVER_IMAGES).count() + lakehouse.read(SILVER_SENTENCES).count()
        assert n_images + n_sentences - kept == removed, "the two ways removed different numbers of rows"
        print(f"  semantic duplicates removed: {removed:,} (planted near-copies: {planted:,})")
        print(f"  before {before:.1f} s, after {after:.1f} s")
        spark.stop()
    print(f"semantic_dedup_after_over_before: {after / before:.3f}")


if __name__ == "__main__":
    main()
