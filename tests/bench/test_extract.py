"""bench/extract.py on a generated corpus: the one-process image side drops exactly what the generator planted, and
the ingest side ingests every document; its one-core reference runs on one CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_pinned_holds_every_thread_and_child_on_one_cpu_and_gives_them_back() -> None:
    allowed = os.sched_getaffinity(0)
    seen: list[set[int]] = []
    asked, answered = threading.Event(), threading.Event()

    def running_before() -> None:  # a thread started before the pin, asked inside the block
        asked.wait(30)
        seen.append(os.sched_getaffinity(0))
        answered.set()

    thread = threading.Thread(target=running_before)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with extract.pinned(1):
            one = {min(allowed)}
            asked.set()
            answered.wait(30)
            assert seen == [one]
            assert os.sched_getaffinity(0) == one and os.sched_getaffinity(child.pid) == one
            grandchild = subprocess.run(
                [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                capture_output=True,
                text=True,
                check=True,
            )
            assert grandchild.stdout.strip() == str(sorted(one))
        assert os.sched_getaffinity(0) == allowed and os.sched_getaffinity(child.pid) == allowed
    finally:
        child.kill()
        thread.join(30)
