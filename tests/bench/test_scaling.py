"""bench/scaling.py's pure parts: cores of a master, the corpus switch, Spark event-log totals per stage window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
scaling = load_script("bench_scaling", REPO / "bench" / "scaling.py")


def test_master_cores() -> None:
    assert scaling.master_cores("local[2]") == 2
    assert scaling.master_cores("local[4, 3]") == 4
    assert scaling.master_cores("local") == 1
    assert scaling.master_cores("local[*]") == os.cpu_count()
    assert scaling.master_cores("spark://127.0.0.1:7077") is None


def test_each_corpus_kind_sets_its_size_and_an_unknown_corpus_stops(tmp_path: Path) -> None:
    assert scaling.corpus_sets("generated", 1000, tmp_path) == [
        "demo.kind=generated",
        f"demo.output={tmp_path}",
        "demo.documents=1000",
    ]
    assert scaling.corpus_sets("photos", 1000, tmp_path)[-1] == "demo.synthetic_images=200"
    with pytest.raises(SystemExit, match="no-such-corpus"):
        scaling.corpus_sets("no-such-corpus", 1000, tmp_path)


def _task_end(finish_ms: int, shuffle_write: int, cpu_ns: int) -> str:
    return json.dumps(
        {
            "Event": "SparkListenerTaskEnd",
            "Stage ID": 0,
            "Task Info": {"Finish Time": finish_ms},
            "Task Metrics": {
                "Executor CPU Time": cpu_ns,
                "Executor Run Time": 1500,
                "Shuffle Write Metrics": {"Shuffle Bytes Written": shuffle_write},
                "Shuffle Read Metrics": {"Remote Bytes Read": 0, "Local Bytes Read": 7},
                "Input Metrics": {"Bytes Read": 100},
                "Output Metrics": {"Bytes Written": 50},
            },
        }
    )


def test_event_log_tasks_count_in_the_window_they_end_in(tmp_path: Path) -> None:
    rolled = tmp_path / "eventlog_v2_local-1"  # Spark 4 writes a folder of rolled files
    rolled.mkdir()
    lines = [
        json.dumps({"Event": "SparkListenerJobStart", "Job ID": 0}),
        _task_end(1_000_500, 10, 2_000_000_000),
        _task_end(1_001_500, 20, 1_000_000_000),
        _task_end(1_003_000, 40, 1_000_000_000),
        _task_end(1_009_000, 80, 1_000_000_000),  # after every window: counted nowhere
    ]
    (rolled / "events_1_local-1").write_text("\n".join(lines) + "\n", encoding="utf-8")
    totals = scaling.event_log_metrics(tmp_path, {"ingest": (1000.0, 1002.0), "fetch": (1002.0, 1004.0)})
    assert totals["ingest"]["tasks"] == 2
    assert totals["ingest"]["shuffle_write_bytes"] == 30
    assert totals["ingest"]["shuffle_read_bytes"] == 14
    assert totals["ingest"]["executor_cpu_s"] == pytest.approx(3.0)
    assert totals["fetch"]["tasks"] == 1
    assert totals["fetch"]["shuffle_write_bytes"] == 40
    assert totals["fetch"]["input_bytes"] == 100
    assert totals["fetch"]["executor_run_s"] == pytest.approx(1.5)


def _descendants_until(pid: int, ready: Callable[[list[str]], bool]) -> None:
    """Wait (at most 5 s) until the command lines of ``pid``'s descendants satisfy ``ready``."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            lines = [" ".join(c.cmdline()) for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            lines = []
        if ready(lines):
            return
        time.sleep(0.02)


def test_a_process_that_execs_into_a_worker_is_counted_as_one() -> None:
    # spark-submit is a shell script that becomes the JVM by exec: same pid, same start time, new command line. The
    # tree sampled is a shell of its own, so that other children of this process (a test's Spark) do not count.
    script = f'(sleep 1; exec {sys.executable} -c "import time; time.sleep(5)" pyspark.$KIND) & wait'
    parent = subprocess.Popen(["sh", "-c", script], env={**os.environ, "KIND": "daemon"})
    try:
        _descendants_until(parent.pid, lambda lines: len(lines) > 0)
        sampler = scaling.TreeSampler(parent.pid)
        sampler.sample()
        assert sampler.samples[-1].rss["python_worker"] == 0 and sampler.samples[-1].rss["other"] > 0
        _descendants_until(parent.pid, lambda lines: any("pyspark.daemon" in line for line in lines))
        sampler.sample()
        assert sampler.samples[-1].rss["python_worker"] > 0
        assert "pyspark.daemon" in sampler.commands["python_worker"]
    finally:
        for child in psutil.Process(parent.pid).children(recursive=True):
            child.kill()
        parent.kill()
        parent.wait()
