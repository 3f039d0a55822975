"""`make run`'s job on a small demo corpus: every stage runs and its tables reconcile."""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from jobs import demo
from realsyn.config import load_config
from realsyn.tables import BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS, FUNNEL, Lakehouse

REPO = Path(__file__).resolve().parents[2]


def test_demo_pipeline_on_a_small_corpus(spark: SparkSession, tmp_path: Path) -> None:
    overrides = [
        f"storage.root={tmp_path / 'lake'}",
        f"demo.output={tmp_path / 'raw'}",
        "demo.documents=12",
        "demo.synthetic_images=4",
    ]
    argv = ["--conf", str(REPO / "conf" / "local.yaml")]
    for item in overrides:
        argv += ["--set", item]
    demo.main(argv)
    cfg = load_config(REPO / "conf" / "local.yaml", overrides)
    lakehouse = Lakehouse(spark, cfg.storage)
    layouts = sorted(r["layout"] for r in lakehouse.read(BRONZE_DOCUMENTS).collect())
    assert layouts == ["mmc4"] * 6 + ["obelics"] * 6
    # Every image reference points at a file the generator wrote.
    for row in lakehouse.read(BRONZE_IMAGE_REFS).select("url").collect():
        assert Path(row["url"].removeprefix("file://")).is_file()
    funnel = {r["step"]: (r["rows_in"], r["rows_out"]) for r in lakehouse.read(FUNNEL).collect()}
    assert funnel["ingest documents"] == (12, 12)
