"""Scaling benchmark: the whole pipeline job (tiny random-weight models) on corpora of growing size.

For each size n the pipeline's demo corpus is n documents (:func:`corpus_sets`): ``--corpus generated``, the
default, is ``realsyn.corpus_generator`` (distinct images and sentences at every size, in the shares of the RealSyn
funnel), ``--corpus photos`` the photographs corpus of ``realsyn.demo_corpus`` (a fixed pool of texts and photographs,
so that everything after extraction costs about the same at every size). ``jobs.pipeline`` runs in its own process
on a fresh lake, as ``make run`` does, and generates the corpus first (its Spark tasks write the shards; a corpus
left in ``--work`` by an earlier run of the same size is kept). Read back from ``gold.runs``: seconds per stage,
rows in and out per table, and the share of each stage's wall time during which no Spark task was running
(driver-side planning, Delta log and commit work, job scheduling: Spark job overhead rather than work; sampled every
0.25 s by the pipeline's progress thread).

Measured beside the run, per stage (the stage's window of ``gold.runs``'s started_at / ended_at):

- rows per second per core of every table it reads and writes: rows / stage seconds / cores, where cores are the
  task slots of the Spark master (``local[N]``: N; ``--cores`` for any other master);
- memory and CPU of the pipeline's process tree, sampled with psutil every 0.25 s (:class:`TreeSampler`). Each
  process is one of: ``driver_python`` (the ``jobs.pipeline`` process itself), ``driver_jvm`` (a ``java`` process
  below it: the Spark driver, which in local mode also runs the executor's tasks), ``python_worker`` (a process
  whose command line names ``pyspark.daemon`` or ``pyspark.worker``: the daemon the JVM starts and the workers it
  forks, which run the pandas / Arrow UDFs) and ``other`` (anything else, e.g. the JDK's ``jspawnhelper``); the
  JSON records one command line per kind. Peak RSS is the
  largest sample: per kind the sum over its processes and, for Python workers, the largest single one (forked
  workers share pages with the daemon, so their sum overstates what they hold). CPU seconds are user + system time;
  a process that ends between two samples loses at most its last 0.25 s;
- Spark's shuffle bytes written and read, input and output bytes and task CPU time, from Spark's event log
  (``spark.eventLog.enabled``, turned on by the benchmark; tasks are counted in the stage in whose window they end).

After each run: rows, live bytes (the files of the table's current Delta version) and bytes on disk (every version
and the log) of every Delta table, the length of every vector column, the gold.funnel rows, and the files and rows of
each export. Everything goes to one JSON file (``--json``; default
``bench/results/scaling-<sizes>-<UTC time>.json``), which ``scripts/cost_model.py`` reads.

Prints one table per size, then time per document at each size and, last,
``time_per_doc_growth_<a>_to_<b>: <seconds per document at b / at a>`` for the two largest sizes: 1.0 is linear
scaling, below 1 is fixed cost being spread out. Full sizes are 1k, 10k and 100k documents; ``--quick`` runs 100
and 1k (its key figure is then ``time_per_doc_growth_100_to_1k``). Model outputs are meaningless (random weights);
only the time, the memory and the bytes are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCHEMA = "realsyn-scaling/2"
SAMPLE_S = 0.25
LAYERS = ("bronze", "silver", "gold")
KINDS = ("driver_python", "driver_jvm", "python_worker", "other")
CORPORA = ("generated", "photos")


def short(n: int) -> str:
    """1000 -> 1k, 100000 -> 100k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def corpus_sets(corpus: str, n: int, raw: Path) -> list[str]:
    """The ``--set`` items that make ``jobs.pipeline`` generate and ingest an n-document demo corpus of kind
    ``corpus`` (``demo.kind``) under ``raw``: ``generated`` (distinct images and sentences at every size) or
    ``photos`` (with ``n / 5`` drawn images, so that its images grow with the documents; its texts and photographs
    are a fixed pool)."""
    if corpus not in CORPORA:
        raise SystemExit(f"--corpus {corpus}: the demo corpus kinds are {', '.join(CORPORA)}")
    sets = [f"demo.kind={corpus}", f"demo.output={raw}", f"demo.documents={n}"]
    return sets + ([f"demo.synthetic_images={n // 5}"] if corpus == "photos" else [])


def master_cores(master: str) -> int | None:
    """Task slots of a local master (``local``: 1, ``local[N]`` / ``local[N,F]``: N, ``local[*]``: the machine's
    CPUs); None for any other master."""
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?", master.strip())
    if m is None:
        return None
    slots = m.group(1)
    return (os.cpu_count() or 1) if slots == "*" else int(slots or 1)


def process_kind(proc: psutil.Process, root: int) -> str:
    """Which part of the pipeline a process of its tree is (see the module docstring)."""
    if proc.pid == root:
        return "driver_python"
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    line = " ".join(cmd)
    if "pyspark.daemon" in line or "pyspark.worker" in line:
        return "python_worker"
    if cmd and Path(cmd[0]).name == "java":
        return "driver_jvm"
    return "other"


@dataclass
class Sample:
    """One look at the process tree: time, RSS summed per kind, the largest single Python worker, and CPU seconds
    used so far per kind (every process seen, its last reading)."""

    t: float
    rss: dict[str, int]
    worker_max: int
    cpu: dict[str, float]


@dataclass
class TreeSampler:
    """Samples RSS and CPU time of a process and all its descendants every ``SAMPLE_S`` seconds in a thread."""

    root: int
    samples: list[Sample] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)
    _kinds: dict[tuple[int, float], str] = field(default_factory=dict)
    _cpu: dict[tuple[int, float], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        """Take one sample (processes that end while being read are skipped)."""
        try:
            top = psutil.Process(self.root)
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = dict.fromkeys(KINDS, 0)
        worker_max = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    # "other" is looked at again: spark-submit's shell script becomes the JVM by exec, same process.
                    if self._kinds.get(key, "other") == "other":
                        self._kinds[key] = kind = process_kind(proc, self.root)
                        self.commands.setdefault(kind, " ".join(proc.cmdline())[:300])
                    kind = self._kinds[key]
                    mem = proc.memory_info().rss
                    times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss[kind] += mem
            if kind == "python_worker":
                worker_max = max(worker_max, mem)
            self._cpu[key] = times.user + times.system
        cpu = dict.fromkeys(KINDS, 0.0)
        for key, seconds in self._cpu.items():
            cpu[self._kinds[key]] += seconds
        self.samples.append(Sample(time.time(), rss, worker_max, cpu))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_S)

    def start(self) -> None:
        """Start sampling in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def window(self, start: float, end: float) -> dict[str, Any]:
        """Peak RSS (bytes) and CPU seconds per kind between two epoch times. CPU is the difference of the last
        sample at or before ``start`` and the first at or after ``end`` (the nearest ones where none is)."""
        inside = [s for s in self.samples if start <= s.t <= end]
        before = [s for s in self.samples if s.t <= start]
        after = [s for s in self.samples if s.t >= end]
        peak = {k: max((s.rss[k] for s in inside), default=0) for k in KINDS}
        result: dict[str, Any] = {
            "samples": len(inside),
            "peak_rss_bytes": {
                **peak,
                "driver": max((s.rss["driver_python"] + s.rss["driver_jvm"] for s in inside), default=0),
                "python_worker_largest": max((s.worker_max for s in inside), default=0),
                "tree": max((sum(s.rss.values()) for s in inside), default=0),
            },
        }
        if self.samples:
            first = before[-1] if before else self.samples[0]
            last = after[0] if after else self.samples[-1]
            result["cpu_seconds"] = {k: round(last.cpu[k] - first.cpu[k], 3) for k in KINDS}
        return result


def event_log_metrics(folder: Path, windows: dict[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    """Shuffle, input and output bytes, task CPU and run time and task counts per stage window, from the Spark
    event log files in ``folder``; a task belongs to the window in which it finished."""
    totals = {
        name: dict.fromkeys(
            (
                "tasks",
                "shuffle_write_bytes",
                "shuffle_read_bytes",
                "input_bytes",
                "output_bytes",
                "executor_cpu_s",
                "executor_run_s",
            ),
            0.0,
        )
        for name in windows
    }
    ordered = sorted(windows.items(), key=lambda kv: kv[1][0])
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if '"SparkListenerTaskEnd"' not in line[:80]:
                    continue
                event = json.loads(line)
                finish = (event.get("Task Info") or {}).get("Finish Time", 0) / 1000
                stage = next((name for name, (a, b) in ordered if a <= finish <= b), None)
                metrics = event.get("Task Metrics")
                if stage is None or not metrics:
                    continue
                row = totals[stage]
                shuffle_read = metrics.get("Shuffle Read Metrics", {})
                row["tasks"] += 1
                row["shuffle_write_bytes"] += metrics.get("Shuffle Write Metrics", {}).get("Shuffle Bytes Written", 0)
                row["shuffle_read_bytes"] += shuffle_read.get("Remote Bytes Read", 0) + shuffle_read.get(
                    "Local Bytes Read", 0
                )
                row["input_bytes"] += metrics.get("Input Metrics", {}).get("Bytes Read", 0)
                row["output_bytes"] += metrics.get("Output Metrics", {}).get("Bytes Written", 0)
                row["executor_cpu_s"] += metrics.get("Executor CPU Time", 0) / 1e9
                row["executor_run_s"] += metrics.get("Executor Run Time", 0) / 1000
    return totals


def side_by_side_args(description: str, ways: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The options of a benchmark that runs two ways (``ways``, e.g. "off/on") side by side on a generated corpus:
    ``--quick`` (1,000 documents), ``--documents``, ``--rounds``, ``--corpus-dir``, ``--work``; ``documents`` is set to
    the size to run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="1,000 documents")
    parser.add_argument("--documents", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=1, help=f"{ways} pairs, alternating which runs first")
    parser.add_argument("--corpus-dir", type=Path, default=None, help="the generated corpus (written unless there)")
    parser.add_argument("--work", type=Path, default=None, help="lakes and event log here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.documents = 1_000
    return args


def generated_lake(args: argparse.Namespace, prefix: str) -> tuple[Any, Any, Path]:
    """(config, lakehouse, event log folder) of a side-by-side benchmark (:func:`side_by_side_args`): one Spark
    session of conf/local.yaml writing its event log under ``<work>/events``, and the lake ``<work>/lake`` with the
    generated corpus of ``args.documents`` documents ingested (the corpus written first unless it is there; ingest
    is retry-safe, so an ingested lake is left as it is)."""
    from realsyn.config import load_config
    from realsyn.demo_corpus import generate, with_demo_inputs
    from realsyn.spark import get_spark
    from realsyn.stages.ingest import run_ingest
    from realsyn.tables import Lakehouse

    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    events = work / "events"
    events.mkdir(parents=True, exist_ok=True)
    raw = args.corpus_dir or work / "raw"
    sets = [f"storage.root={work / 'lake'}", f"demo.output={raw}", f"demo.documents={args.documents}"]
    sets += [
        "demo.kind=generated",
        'spark.conf.spark.ui.showConsoleProgress="false"',
        'spark.conf.spark.eventLog.enabled="true"',
        f'spark.conf.spark.eventLog.dir="{events.as_uri()}"',
        'spark.conf.spark.eventLog.compress="false"',
    ]
    cfg = with_demo_inputs(load_config(REPO / "conf" / "local.yaml", sets))
    spark = get_spark(cfg.spark)
    spark.sparkContext.setLogLevel("WARN")
    generate(cfg.demo, spark)
    lakehouse = Lakehouse(spark, cfg.storage)
    run_ingest(lakehouse, cfg)
    return cfg, lakehouse, events


def folder_bytes(folder: Path) -> tuple[int, int]:
    """(bytes, files) of every file under ``folder``."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def vector_dims(dt: DeltaTable, schema: pa.Schema) -> dict[str, int]:
    """Length of the first value of every list<float> column (embeddings and centroids)."""
    columns = [f.name for f in schema if pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type)]
    if not columns:
        return {}
    head = dt.to_pyarrow_dataset().head(1, columns=columns)
    return {c: len(head.column(c)[0]) for c in columns if head.num_rows and head.column(c)[0].is_valid}


def table_sizes(lake: Path) -> dict[str, dict[str, Any]]:
    """Per Delta table of the lake (``<layer>.<table>``): version, rows, live bytes and files of the current
    version, bytes and files on disk (every version and the log), and vector lengths."""
    sizes: dict[str, dict[str, Any]] = {}
    for layer in LAYERS:
        for path in sorted((lake / layer).glob("*/_delta_log")):
            table = path.parent
            dt = DeltaTable(str(table))
            adds = pa.table(dt.get_add_actions(flatten=True))
            records = adds.column("num_records").to_pylist() if "num_records" in adds.column_names else [None]
            rows = sum(records) if None not in records else dt.to_pyarrow_dataset().count_rows()
            disk, disk_files = folder_bytes(table)
            schema = dt.to_pyarrow_dataset().schema
            sizes[f"{layer}.{table.name}"] = {
                "version": dt.version(),
                "rows": int(rows),
                "live_bytes": int(sum(adds.column("size_bytes").to_pylist())),
                "live_files": adds.num_rows,
                "disk_bytes": disk,
                "disk_files": disk_files,
                "vector_dims": vector_dims(dt, schema),
            }
    return sizes


def export_sizes(root: Path) -> dict[str, dict[str, Any]]:
    """Per ``<scale>/<format>`` folder of the exports: bytes, files and rows (parquet: the files' metadata;
    webdataset: sizes.json; delta: the table's row count)."""
    sizes: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []:
        rows: int | None = None
        if folder.name == "parquet":
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in folder.rglob("*.parquet"))
        elif folder.name == "webdataset" and (folder / "sizes.json").is_file():
            rows = sum(json.loads((folder / "sizes.json").read_text(encoding="utf-8")).values())
        elif folder.name == "delta" and (folder / "_delta_log").is_dir():
            rows = DeltaTable(str(folder)).to_pyarrow_dataset().count_rows()
        total, files = folder_bytes(folder)
        sizes[f"{folder.parent.name}/{folder.name}"] = {"bytes": total, "files": files, "rows": rows}
    return sizes


def funnel_rows(lake: Path) -> dict[str, list[dict[str, Any]]]:
    """gold.funnel by stage, steps in order (every model's funnel of a stage that runs models)."""
    path = lake / "gold" / "funnel"
    if not (path / "_delta_log").is_dir():
        return {}
    rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["stage"], str(r["model_id"]), int(r["step_index"]))):
        out.setdefault(r["stage"], []).append({k: v for k, v in r.items() if k != "stage"})
    return out


def _rates(rows: dict[str, int], seconds: float, cores: int) -> dict[str, float]:
    return {t: round(n / seconds / cores, 4) for t, n in sorted(rows.items())} if seconds > 0 else {}


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


def run_size(
    n: int,
    work: Path,
    conf: Path,
    extra: Sequence[str] = (),
    tag: str = "",
    corpus: str = "generated",
    cores: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline on an n-document corpus (``extra``: more ``--set`` items, ``tag``: a name for this run's
    lake, so that runs of one size share the corpus) and measure it: wall time, the lake, the per-stage rows of
    gold.runs with their rates, memory, CPU and Spark task metrics, table and export sizes, the funnel."""
    from realsyn.config import load_config

    lake, raw = work / f"lake-{n}{tag}", work / f"raw-{corpus}-{n}"
    events = Path(tempfile.mkdtemp(prefix=f"events-{n}{tag}-", dir=work))
    sets = [f"storage.root={lake}", *corpus_sets(corpus, n, raw)]
    sets += [
        'spark.conf.spark.eventLog.enabled="true"',
        f'spark.conf.spark.eventLog.dir="{events.as_uri()}"',
        'spark.conf.spark.eventLog.compress="false"',
    ]
    sets += extra
    master = load_config(conf, list(sets)).spark.master
    slots = cores or master_cores(master)
    if slots is None:
        raise SystemExit(f"spark.master {master!r}: its cores are unknown here; pass --cores")
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", str(conf)]
    for item in sets:
        argv += ["--set", item]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        stdout, stderr = proc.communicate()
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed on {n} documents:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    runs = DeltaTable(str(lake / "gold" / "runs")).to_pyarrow_table().to_pylist()
    latest = max(runs, key=lambda r: r["started_at"])["run_id"]  # a lake run before holds earlier runs' rows too
    ran = (r for r in runs if r["run_id"] == latest and r["status"] in ("ok", "skipped"))
    stages = sorted(ran, key=lambda r: int(r["stage_index"]))
    windows = {r["stage"]: (_epoch(r["started_at"]), _epoch(r["ended_at"])) for r in stages}
    spark_metrics = event_log_metrics(events, windows)
    measured = []
    for r in stages:
        seconds = float(r["seconds"])
        rows_in, rows_out = dict(r["rows_in"]), dict(r["rows_out"])
        measured.append(
            {
                "stage": r["stage"],
                "status": r["status"],
                "seconds": seconds,
                "task_busy_share": r["task_busy_share"],
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_per_s_per_core": {
                    "in": _rates(rows_in, seconds, slots),
                    "out": _rates(rows_out, seconds, slots),
                },
                **sampler.window(*windows[r["stage"]]),
                "spark": spark_metrics[r["stage"]],
            }
        )
    start, end = sampler.samples[0].t if sampler.samples else 0.0, time.time()
    return {
        "n": n,
        "wall": wall,
        "lake": lake,
        "stages": stages,
        "run_id": latest,
        "code_version": stages[0]["code_version"] if stages else None,
        "master": master,
        "cores": slots,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "measured": measured,
        "whole_run": sampler.window(start, end),
        "process_commands": sampler.commands,
        "tables": table_sizes(lake),
        "exports": export_sizes(lake / "exports"),
        "funnel": funnel_rows(lake),
    }


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def report(result: dict[str, Any]) -> tuple[float, float]:
    """Print one size's table; (seconds in stages, seconds without a running task)."""
    n = int(str(result["n"]))
    stages = result["stages"]
    assert isinstance(stages, list)
    measured = {m["stage"]: m for m in result.get("measured", [])}
    print(f"\n{n:,} documents: wall {float(str(result['wall'])):.1f} s (Spark start-up and corpus included)")
    print(f"{'stage':<26}{'seconds':>9}{'idle share':>11}{'driver MiB':>11}{'worker MiB':>11}  rows out")
    total = idle = 0.0
    for r in stages:
        busy = r["task_busy_share"]
        idle_share = 1.0 - float(busy) if busy is not None else 0.0
        total += float(r["seconds"])
        idle += float(r["seconds"]) * idle_share
        out = ", ".join(f"{k} {v:,}" for k, v in sorted(dict(r["rows_out"]).items())[:3])
        stage = r["stage"] + (" (skipped)" if r["status"] == "skipped" else "")
        peaks = measured.get(r["stage"], {}).get("peak_rss_bytes", {})
        driver = _mib(peaks["driver"]) if peaks else "-"
        worker = _mib(peaks["python_worker_largest"]) if peaks else "-"
        print(f"{stage:<26}{float(r['seconds']):>9.1f}{idle_share:>11.2f}{driver:>11}{worker:>11}  {out}")
    print(f"{'all stages':<26}{total:>9.1f}{idle / total if total else 0.0:>11.2f}")
    return total, idle


def host() -> dict[str, Any]:
    """The machine the benchmark ran on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(encoding="utf-8"), re.MULTILINE)
        model = found.group(1).strip() if found else ""
    return {
        "platform": platform.platform(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
    }


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """One size's result as written to the JSON file (gold.runs rows are summarised by ``measured``)."""
    keep = {k: v for k, v in result.items() if k not in ("stages", "lake")}
    keep["documents"] = keep.pop("n")
    keep["wall_s"] = round(float(keep.pop("wall")), 3)
    return keep


def shown(path: Path) -> str:
    """A path relative to the repository where it lies inside it."""
    resolved = path.resolve()
    return resolved.relative_to(REPO).as_posix() if resolved.is_relative_to(REPO) else str(path)


def default_json(sizes: Iterable[int]) -> Path:
    """bench/results/scaling-<sizes>-<UTC time>.json."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return REPO / "bench" / "results" / f"scaling-{'-'.join(short(n) for n in sizes)}-{stamp}.json"


def main() -> None:
    """Run every size, write the JSON, print the tables, the time per document and the growth figure last."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 and 1k documents instead of 1k, 10k and 100k")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    parser.add_argument("--corpus", choices=CORPORA, default="generated", help="the demo corpus's kind (demo.kind)")
    parser.add_argument("--cores", type=int, default=None, help="task slots, where spark.master is not local[N]")
    parser.add_argument("--json", type=Path, default=None, help="output file (default bench/results/scaling-...)")
    parser.add_argument("--work", type=Path, default=None, help="keep corpora, lakes and event logs here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run, as jobs.pipeline takes it (repeatable; kept in the JSON)",
    )
    args = parser.parse_args()
    sizes = args.sizes or ([100, 1_000] if args.quick else [1_000, 10_000, 100_000])
    out = args.json or default_json(sizes)
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "conf": shown(args.conf),
        "corpus": args.corpus,
        "overrides": args.set,
        "host": host(),
        "sizes": [],
    }
    per_doc = {}
    with tempfile.TemporaryDirectory(prefix="realsyn-scaling-") as tmp:
        work = Path(tmp) if args.work is None else args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        if stale := [str(work / f"lake-{n}") for n in sizes if (work / f"lake-{n}").exists()]:
            raise SystemExit(
                f"--work {work} holds a lake of an earlier run ({', '.join(stale)}): its stages would be "
                "skipped, not measured; remove it or name another --work (corpora there are reused)"
            )
        for n in sizes:
            result = run_size(n, work, args.conf, args.set, corpus=args.corpus, cores=args.cores)
            total, idle = report(result)
            per_doc[n] = total / n
            print(f"time per document at {n:,}: {per_doc[n] * 1000:.2f} ms; no task running {idle / total:.0%} of it")
            document["sizes"].append(to_json(result))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"\njson: {shown(out)}")
    print("time per document: " + ", ".join(f"{short(n)} {per_doc[n] * 1000:.2f} ms" for n in sizes))
    if len(sizes) > 1:
        a, b = sizes[-2], sizes[-1]
        print(f"time_per_doc_growth_{short(a)}_to_{short(b)}: {per_doc[b] / per_doc[a]:.3f}")


if __name__ == "__main__":
    main()
