"""A single stage's job, run as its own process and Spark application; spark-submit.sh's refusal of an unknown job.

spark-submit.sh itself (the wheel, Delta's packages, the shipped registry) submits the pipeline job to a standalone
cluster in tests/jobs/test_pipeline.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[2]


def test_unknown_job_is_refused() -> None:
    result = subprocess.run([str(REPO / "spark-submit.sh"), "no_such_job"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "no job named 'no_such_job'" in result.stderr


def test_a_single_stage_job_ingests_and_prints_what_the_pipeline_prints(tmp_path: Path) -> None:
    docs = tmp_path / "in" / "docs.jsonl"
    docs.parent.mkdir()
    docs.write_text(
        "\n".join(
            json.dumps({"url": f"https://s.example/{i}", "text_list": ["A.", "B."], "image_info": []}) for i in range(4)
        )
        + "\n{broken\n"
    )
    # Spark as conf/local.yaml sets it up: with Spark's 200 shuffle partitions and Delta's 50 log-state ones, this
    # job of five lines would run some 2,000 tasks.
    local = yaml.safe_load((REPO / "conf" / "local.yaml").read_text(encoding="utf-8"))["spark"]["conf"]
    spark_conf = "".join(f"    {key}: '{value}'\n" for key, value in local.items())
    conf = tmp_path / "job.yaml"
    conf.write_text(
        f"storage:\n  root: {tmp_path / 'lake'}\nspark:\n  conf:\n{spark_conf}"
        f"ingest:\n  inputs:\n    - path: {docs.parent}\n      layout: mmc4\n      source: s\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "jobs.ingest", "--conf", str(conf)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    # The log's name, the stage's summary and its time; Spark's and Ivy's output went to the log, as in the pipeline.
    log = re.search(r"^realsyn ingest: log (\S+)$", result.stdout, re.M)
    assert log is not None and Path(log[1]).parent == tmp_path / "lake" / "_logs", console
    assert "documents read 5 = new 4 + already present 0 + rejected 1" in result.stdout
    texts = DeltaTable(str(tmp_path / "lake" / "bronze" / "texts")).to_pandas()
    assert sorted(texts["text"]) == ["A.", "A.", "A.", "A.", "B.", "B.", "B.", "B."]
    assert re.search(r"^realsyn ingest: done in [0-9.]+ s$", result.stdout, re.M)
    for noise in ("WARN", "::", "Ivy", "[Stage", "Traceback"):
        assert noise not in console, noise
    assert "stage ingest done" in Path(log[1]).read_text(encoding="utf-8")
