"""A Spark standalone cluster on loopback, started from pyspark's own distribution (no download).

One master and N workers, each a JVM of its own (``bin/spark-class org.apache.spark.deploy.{master.Master,worker.
Worker}``), bound to 127.0.0.1 only. Every worker has its own work directory (the executors' working directories
live under it) and its own local directories, so executors share the filesystem with the driver but not its working
directory. The processes are stopped by their pids.

A cluster run's tables are compared with a local run's by :func:`assert_same_rows`: equal rows in any order, floats
within a tolerance.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark
from deltalake import DeltaTable

SPARK_HOME = Path(pyspark.__file__).resolve().parent
LOOPBACK = "127.0.0.1"

# Spark settings of a run on the cluster: the partitioning of conf/local.yaml's local[2] runs (whose tables it is
# compared with), so that both plans split the data alike; two executors of one core each make the same default
# parallelism as local[2].
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.session.timeZone": "UTC",
    "spark.executor.memory": "1g",
    "spark.driver.memory": "2g",
    # The driver listens on loopback too (by default it takes the address of the host name's interface).
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}
# Columns that differ between any two runs: fetch times, and each pipeline run's id and timings in gold.runs (its
# stages, statuses, row counts and table versions must match; its config hash and code version too where both runs
# have the same storage root and run the same package).
VOLATILE = {
    "bronze/fetched_images": {"fetched_at", "elapsed_ms"},
    "gold/runs": {"run_id", "started_at", "ended_at", "seconds", "task_busy_share"},
}
# Floats (embedding components, cosines, centroid coordinates) are compared within this absolute tolerance: the CPU
# kernels of a forward pass may sum in another order when a batch holds other rows, and aggregations add partial
# sums in the order tasks finish, which moves the last bits of a float32. Every other value must be equal.
FLOAT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Cluster:
    """A running standalone cluster: its master URL, web UI, workers' work directories and process ids."""

    master_url: str
    web_ui: str
    work_dirs: tuple[Path, ...]
    pids: tuple[int, ...]
    logs: tuple[Path, ...]

    def log_tail(self, chars: int = 3000) -> str:
        """The end of every daemon's log, for a failure message."""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in self.logs if p.exists())


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _daemon_env(local_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP=LOOPBACK,
        SPARK_LOCAL_HOSTNAME="localhost",
        SPARK_LOCAL_DIRS=str(local_dir),
        SPARK_LOG_DIR=str(local_dir),
        SPARK_NO_DAEMONIZE="1",
    )
    return env


def _alive_workers(web_ui: str) -> int:
    try:
        with urllib.request.urlopen(f"{web_ui}/json/", timeout=2) as response:
            state = json.load(response)
    except OSError:
        return -1
    return int(state.get("aliveworkers", 0))


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each daemon by its pid (workers first, the master last), SIGKILL what is still up after 20 s."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def standalone_cluster(
    folder: Path, workers: int = 2, cores: int = 1, memory: str = "1g", timeout_s: float = 120.0
) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers on loopback under ``folder``; yield once all workers registered."""
    port, ui_port = free_port(), free_port()
    master_url = f"spark://{LOOPBACK}:{port}"
    web_ui = f"http://{LOOPBACK}:{ui_port}"
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    work_dirs: list[Path] = []

    def launch(name: str, args: list[str]) -> None:
        local = folder / name
        local.mkdir(parents=True, exist_ok=True)
        log = local / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [spark_class, *args], cwd=local, env=_daemon_env(local), stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)

    try:
        master = ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK, "--port", str(port)]
        launch("master", [*master, "--webui-port", str(ui_port)])
        for i in range(workers):
            work = folder / f"worker-{i}" / "work"
            work.mkdir(parents=True)
            work_dirs.append(work)
            worker = ["org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK, "--port", "0", "--webui-port", "0"]
            resources = ["--cores", str(cores), "--memory", memory, "--work-dir", str(work)]
            launch(f"worker-{i}", [*worker, *resources, master_url])
        cluster = Cluster(master_url, web_ui, tuple(work_dirs), tuple(p.pid for p in procs), tuple(logs))
        deadline = time.monotonic() + timeout_s
        while _alive_workers(web_ui) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} workers did not register in {timeout_s:.0f} s\n{cluster.log_tail()}")
            time.sleep(0.5)
        yield cluster
    finally:
        _stop(procs)


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
