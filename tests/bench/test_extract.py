"""bench/extract.py on a generated corpus: the one-process image side drops exactly what the generator planted, and
the ingest side ingests every document."""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import SparkSession

from realsyn.config_sections import GeneratedCorpusConfig
from realsyn.corpus_generator import MANIFEST, generate_corpus
from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
extract = load_script("bench_extract", REPO / "bench" / "extract.py")


def test_the_one_process_image_funnel_drops_what_was_planted(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate_corpus(GeneratedCorpusConfig(documents=40, seed=5), corpus)
    planted = json.loads((corpus / MANIFEST).read_text(encoding="utf-8"))["counts"]
    urls, passed, distinct, kept = extract.images_single(extract.image_rows(corpus, tmp_path / "rows"))
    assert urls == sum(1 for p in (corpus / "images").rglob("*") if p.is_file())
    assert urls - passed == planted["images.too_small"] + planted["images.aspect_ratio"] + planted["images.broken"]
    assert passed - distinct == planted["images.exact_duplicate"]
    assert distinct - kept == planted["images.near_duplicate"]


def test_the_ingest_side_ingests_every_generated_document(spark: SparkSession, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate_corpus(GeneratedCorpusConfig(documents=40, seed=5), corpus)
    seconds, added = extract.timed_ingest(spark, corpus, tmp_path / "lake")
    assert added == 40 and seconds > 0
    _, again = extract.timed_ingest(spark, corpus, tmp_path / "lake")  # the same lake: nothing is new
    assert again == 0
