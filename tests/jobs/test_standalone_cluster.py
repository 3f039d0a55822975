"""The demo job on a real multi-process cluster ends with the tables of a local[2] run.

A Spark standalone master and two workers (one core, small memory each) run on loopback from pyspark's own
distribution; ``./spark-submit.sh`` submits the job to them exactly as a user would. Executors are separate JVMs
with their own Python workers and their own working directories (under each worker's work dir), so nothing the
driver holds in memory, in its working directory or on its ``sys.path`` reaches them except through Spark: the
code goes as the wheel zip (``--py-files``), the model registry with ``--files``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from tests.support.standalone import Cluster, standalone_cluster

REPO = Path(__file__).resolve().parents[2]
# The job submitted to both masters (jobs/<JOB>.py).
JOB = "pipeline"
# The stages compared on the cluster. In `make test`: documents to embeddings, the stages whose executors read
# input files, fetch, run pandas UDFs and load models from the shipped registry. The long form,
# REALSYN_STANDALONE_UNTIL=cluster_images, adds semantic dedup, k-means, retrieval and image clusters (trees shipped
# to executors with addFile); docs/cluster.md has its figures. Generation and the dataset stages run on local[2] in
# tests/jobs/test_pipeline.py.
UNTIL = os.environ.get("REALSYN_STANDALONE_UNTIL", "embed")
# Spark settings of both runs: the same partitioning, so that both plans split the data alike.
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.executor.memory": "1g",
    "spark.driver.memory": "2g",
    # The driver listens on loopback too (by default it takes the address of the host name's interface).
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}
# Columns that record when or how long, not what: they differ between any two runs.
# Columns that differ between any two runs: fetch times, and each pipeline run's id and timings in gold.runs (its
# stages, statuses, row counts, config hash and code version must match).
VOLATILE = {
    "bronze/fetched_images": {"fetched_at", "elapsed_ms"},
    "gold/runs": {"run_id", "started_at", "ended_at", "seconds", "task_busy_share"},
}
# Floats (embedding components, cosines, centroid coordinates) are compared within this absolute tolerance: the CPU
# kernels of a forward pass may sum in another order when a batch holds other rows, and aggregations add partial
# sums in the order tasks finish, which moves the last bits of a float32. Every other value must be equal.
FLOAT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two workers of one core and 1.5 GB each, stopped by their pids when the module ends."""
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="1536m") as c:
        yield c


def submit(master: str, cwd: Path, raw: Path) -> subprocess.CompletedProcess[str]:
    """``./spark-submit.sh JOB`` from ``cwd`` with a relative storage.root, on the demo corpus under ``raw``."""
    cwd.mkdir(parents=True)
    argv = [str(REPO / "spark-submit.sh"), JOB, "--conf", str(REPO / "conf" / "local.yaml")]
    for item in ("storage.root=lake", f"demo.output={raw}", "demo.documents=12"):
        argv += ["--set", item]
    argv += ["--until", UNTIL, "--", "--master", master]
    for key, value in SPARK_CONF.items():
        argv += ["--conf", f"{key}={value}"]
    # Neither the driver's nor the workers' environment points Python at the checkout.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYSPARK_PYTHON", "VIRTUAL_ENV"}}
    env.update(PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200, check=False)


def tables(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every Delta table under ``root`` (``layer/table``) as rows, volatile columns left out."""
    found = {}
    for log in sorted(root.glob("*/*/_delta_log")):
        name = f"{log.parent.parent.name}/{log.parent.name}"
        drop = VOLATILE.get(name, set())
        rows = DeltaTable(str(log.parent)).to_pyarrow_table().to_pylist()
        found[name] = [{k: v for k, v in row.items() if k not in drop} for row in rows]
    return found


def canonical(row: dict[str, Any]) -> str:
    """A sortable text of a row without its floats (rows are unique on their keys, none of which is a float)."""

    def value(v: Any) -> Any:
        if isinstance(v, float):
            return None
        if isinstance(v, list):
            return [value(x) for x in v]
        if isinstance(v, dict):
            return {k: value(x) for k, x in sorted(v.items())}
        return v

    return repr({k: value(v) for k, v in sorted(row.items())})


def close(a: Any, b: Any) -> bool:
    """Equal, except that floats (also inside lists) may differ by FLOAT_TOLERANCE."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= FLOAT_TOLERANCE)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_same_rows(name: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal rows in any order: floats within FLOAT_TOLERANCE, every other value exactly."""
    assert len(got) == len(want), name
    for g, w in zip(sorted(got, key=canonical), sorted(want, key=canonical), strict=True):
        assert g.keys() == w.keys(), name
        for column in g:
            assert close(g[column], w[column]), (name, column, g[column], w[column])


# Two whole demo runs: a few minutes on two idle cores, several times that on a loaded machine.
@pytest.mark.timeout(2700)
def test_standalone_cluster_run_matches_local(cluster: Cluster, tmp_path: Path) -> None:
    raw = tmp_path / "raw"  # one corpus for both runs: image URLs, hence url_ids, are the same
    local = submit("local[2]", tmp_path / "local", raw)
    assert local.returncode == 0, local.stderr[-4000:]
    remote = submit(cluster.master_url, tmp_path / "remote", raw)
    assert remote.returncode == 0, f"{remote.stderr[-4000:]}\n{cluster.log_tail()}"

    # The job ran on both workers, in executors of their own (a work dir per application and executor).
    for work in cluster.work_dirs:
        executors = [d for d in work.glob("app-*/*") if d.is_dir()]
        assert len(executors) == 1, executors
        assert "Finished task" in (executors[0] / "stderr").read_text(errors="replace")

    want, got = tables(tmp_path / "local" / "lake"), tables(tmp_path / "remote" / "lake")
    assert sorted(got) == sorted(want)
    assert {"bronze/documents", "silver/image_embeddings", "silver/sentence_embeddings", "gold/funnel"} <= set(want)
    assert UNTIL != "cluster_images" or {"silver/retrieval", "silver/image_clusters"} <= set(want)
    for name in want:
        # Reject tables may be empty on the demo corpus; every other table has rows to compare.
        assert want[name] or name.endswith("rejects"), f"{name} is empty"
        assert_same_rows(name, got[name], want[name])
