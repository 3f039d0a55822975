"""`make run`'s job, run as users run it (its own process and Spark application), on a small demo corpus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[2]


def table(root: Path, name: str) -> list[dict[str, object]]:
    layer, _, rest = name.partition(".")
    return DeltaTable(str(root / layer / rest)).to_pyarrow_table().to_pylist()


def test_demo_pipeline_on_a_small_corpus(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    argv = [sys.executable, "-m", "jobs.demo", "--conf", str(REPO / "conf" / "local.yaml")]
    for item in (
        f"storage.root={lake}",
        f"demo.output={tmp_path / 'raw'}",
        "demo.documents=12",
        "demo.synthetic_images=4",
    ):
        argv += ["--set", item]
    # No virtualenv on PATH and no PYSPARK_PYTHON: Spark's Python workers must still find the project's packages.
    env = {k: v for k, v in os.environ.items() if k not in {"PYSPARK_PYTHON", "VIRTUAL_ENV", "PYSPARK_GATEWAY_PORT"}}
    env["PATH"] = "/usr/bin:/bin"
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]

    layouts = sorted(str(r["layout"]) for r in table(lake, "bronze.documents"))
    assert layouts == ["mmc4"] * 6 + ["obelics"] * 6
    refs = table(lake, "bronze.image_refs")
    # Every image reference points at a file the generator wrote, and every distinct URL was fetched from it.
    assert all(Path(str(r["url"]).removeprefix("file://")).is_file() for r in refs)
    fetched = table(lake, "bronze.fetched_images")
    assert sorted(str(r["url_id"]) for r in fetched) == sorted({str(r["url_id"]) for r in refs})
    assert {r["status"] for r in fetched} == {"ok"}
    funnel = {(r["stage"], r["step"]): (r["rows_in"], r["rows_out"]) for r in table(lake, "gold.funnel")}
    assert funnel[("ingest", "ingest documents")] == (12, 12)
    # Each stage's output feeds the next: kept images and sentences are embedded, and images get retrieved texts.
    images = {r["image_id"] for r in table(lake, "silver.images")}
    sentences = {r["sentence_id"] for r in table(lake, "silver.sentences")}
    assert images and sentences
    assert {r["image_id"] for r in table(lake, "silver.image_embeddings")} == images
    assert {r["sentence_id"] for r in table(lake, "silver.sentence_embeddings")} == sentences
    retrieval = table(lake, "silver.retrieval")
    assert {r["image_id"] for r in retrieval} == images
    assert {r["sentence_id"] for r in retrieval} <= sentences
    # Every image with retrieved texts ends with exactly one synthetic text or one reject with a reason.
    kept = [r["image_id"] for r in table(lake, "gold.synthetic_texts")]
    rejected = [r["image_id"] for r in table(lake, "gold.synthetic_text_rejects")]
    assert sorted(kept + rejected) == sorted({r["image_id"] for r in retrieval})
    assert all(r["reject_reason"] for r in table(lake, "gold.synthetic_text_rejects"))
    assert {r["image_id"] for r in table(lake, "gold.captions")} == images
