"""Fault injection for the pipeline job: run it as its own process group, SIGKILL it inside a stage, compare tables.

Shared by tests/jobs/test_pipeline.py (a short form) and bench/fault_injection.py (every stage, more moments).
A killed run may start from scratch, or from a copy of a reference lake as it was when the reference run started
the moment's stage (:func:`lake_before`), which spares the test the stages before it.
A moment is a stage and a way to pick the instant inside it: ``delay`` kills a given number of seconds after the
stage started (as its log line says), ``commit`` kills as soon as the ``nth`` new file appears under the tables
of the stage's output (a Parquet file of a commit not written yet, or the commit file itself).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("bronze", "silver", "gold")
# Tables whose content names the run rather than the data: left out of the comparison.
RUN_SPECIFIC = {"gold.runs"}
# Columns that measure the run that wrote a row (besides timestamps): left out of the comparison.
RUN_SPECIFIC_COLUMNS = {"bronze.fetched_images": {"elapsed_ms"}}


@dataclass(frozen=True)
class Moment:
    """Where to kill: inside ``stage``, ``delay_s`` after it started, or at its ``nth`` new output file."""

    stage: str
    kind: str  # "delay" or "commit"
    delay_s: float = 0.0
    nth: int = 1

    def __str__(self) -> str:
        at = f"{self.delay_s:.1f} s in" if self.kind == "delay" else f"at new output file #{self.nth}"
        return f"{self.stage} ({at})"


def pipeline_argv(conf: Path, lake: Path, raw: Path, sets: Sequence[str], *args: str) -> list[str]:
    """The pipeline job's command line on ``lake`` with the demo corpus under ``raw``."""
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", str(conf), *args]
    for item in (f"storage.root={lake}", f"demo.output={raw}", *sets):
        argv += ["--set", item]
    return argv


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no virtualenv on PATH, no PYSPARK_PYTHON, no running gateway."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYSPARK_PYTHON", "VIRTUAL_ENV", "PYSPARK_GATEWAY_PORT"}}
    env["PATH"] = "/usr/bin:/bin"
    env["PYTHONPATH"] = str(REPO)
    return env


def start(argv: Sequence[str], out: Path) -> subprocess.Popen[bytes]:
    """Start the job in a process group of its own (the JVM and the Python workers join it), output to ``out``."""
    with out.open("ab") as f:
        return subprocess.Popen(
            argv, cwd=REPO, env=clean_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the job's whole process group (driver, JVM, Python workers) and reap the driver."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def newest_log(lake: Path, after: float) -> Path | None:
    """The run log under ``lake/_logs`` created after ``after`` (epoch seconds), if any."""
    logs = [p for p in (lake / "_logs").glob("*.log") if p.stat().st_mtime >= after]
    return max(logs, key=lambda p: p.stat().st_mtime) if logs else None


def started_stages(log: Path | None) -> list[str]:
    """Stages whose start the run log records, in order."""
    if log is None or not log.exists():
        return []
    marker = "realsyn.pipeline: stage "
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if marker in line and line.endswith(" started"):
            out.append(line.split(marker, 1)[1].removesuffix(" started"))
    return out


def table_files(lake: Path) -> set[str]:
    """Every file under the lake's table folders."""
    return {str(p) for layer in LAYERS for p in (lake / layer).rglob("*") if p.is_file()}


def run_and_kill(
    argv: Sequence[str],
    lake: Path,
    moment: Moment,
    out: Path,
    timeout_s: float = 900,
    while_running: Callable[[], None] | None = None,
) -> str | None:
    """Run the job and SIGKILL it at ``moment``; the stage it was in when killed, or None if it finished first.

    ``while_running`` is called once, when the moment's stage has started (the kill waits for it to return).
    """
    t0 = time.time()
    proc = start(argv, out)
    deadline = t0 + timeout_s
    stage_started: float | None = None
    before: set[str] = set()
    log: Path | None = None
    while time.time() < deadline:
        if proc.poll() is not None:
            return None
        log = log or newest_log(lake, t0)
        stages = started_stages(log)
        if stage_started is None and moment.stage in stages:
            before = table_files(lake) if moment.kind == "commit" else set()
            if while_running is not None:
                while_running()
            stage_started = time.time()
        if stage_started is not None:
            if moment.kind == "delay" and time.time() - stage_started >= moment.delay_s:
                break
            if moment.kind == "commit" and len(table_files(lake) - before) >= moment.nth:
                break
        time.sleep(0.02)
    kill_group(proc)
    stages = started_stages(log)
    return stages[-1] if stages else None


def lake_before(reference: Path, stage: str, dest: Path) -> None:
    """Copy ``reference``, the lake of one uninterrupted run, to ``dest`` as it was when that run started ``stage``.

    Every Delta table keeps the versions committed before that instant (later versions' commit files, checkpoints
    and their checksums are removed; their data files stay, unreferenced, as a killed writer leaves them); a table
    first created later is removed, and so is every other file (exports, the report, the run log) written later.
    """
    runs = DeltaTable(str(reference / "gold" / "runs")).to_pyarrow_table().to_pylist()
    started = [r["started_at"] for r in runs if r["stage"] == stage]
    if len(started) != 1:
        raise ValueError(f"{reference} holds {len(started)} runs of {stage}, not one")
    instant_ms = started[0].timestamp() * 1000
    shutil.copytree(reference, dest)  # copy2: modification times are kept
    tables = sorted(log.parent for log in dest.rglob("_delta_log"))
    for table in tables:
        log = table / "_delta_log"
        versions = {}
        for commit in log.glob("*.json"):
            first = json.loads(commit.read_text(encoding="utf-8").splitlines()[0])
            versions[int(commit.stem)] = first["commitInfo"]["timestamp"]
        kept = [v for v, at in versions.items() if at <= instant_ms]
        if not kept:
            shutil.rmtree(table)
            continue
        last = max(kept)
        (log / "_last_checkpoint").unlink(missing_ok=True)  # Delta finds the newest checkpoint by listing
        for f in log.iterdir():
            name = f.name.removeprefix(".")  # Hadoop's local file system keeps a checksum in .<file>.crc
            if name[:20].isdigit() and int(name[:20]) > last:
                f.unlink()
    tables = [t for t in tables if t.exists()]
    empty = {d for d in dest.rglob("*") if d.is_dir() and not any(d.iterdir())}
    for f in [f for f in dest.rglob("*") if f.is_file()]:
        inside_table = any(t in f.parents for t in tables)
        if not inside_table and f.stat().st_mtime * 1000 > instant_ms:
            f.unlink()
    for d in sorted((d for d in dest.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if d not in empty and not any(d.iterdir()):  # emptied above: made after the instant
            d.rmdir()


def run_to_end(argv: Sequence[str], out: Path, timeout_s: float = 900) -> int:
    """Run the job to its end; its exit status."""
    proc = start(argv, out)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise


def tables(lake: Path) -> dict[str, DeltaTable]:
    """Every Delta table under ``lake`` by logical name."""
    found = {}
    for layer in LAYERS:
        for path in sorted((lake / layer).glob("*/_delta_log")):
            found[f"{layer}.{path.parent.name}"] = DeltaTable(str(path.parent))
    return found


def _canonical(value: Any) -> Any:
    """A hashable, order-stable form of a cell: floats rounded (vectors too), lists and dicts recursed."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    return value


def rows(table: DeltaTable, skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[Any, ...]]:
    """The table's rows in canonical form, sorted; timestamp columns (when a row was written) and ``skip`` left
    out."""
    data = table.to_pyarrow_table()
    keep = [f.name for f in data.schema if not str(f.type).startswith("timestamp") and f.name not in skip]
    return sorted(
        (tuple(_canonical(r[c]) for c in keep) for r in data.select(keep).to_pylist()),
        key=repr,
    )


def differences(reference: Path, other: Path) -> list[str]:
    """What differs between the tables of two lakes (names, then rows: missing, extra or duplicated)."""
    ref, got = tables(reference), tables(other)
    out = []
    for name in sorted(set(ref) | set(got)):
        if name in RUN_SPECIFIC:
            continue
        if name not in got or name not in ref:
            out.append(f"{name}: only in {'the reference' if name in ref else 'the rerun'}")
            continue
        skip = RUN_SPECIFIC_COLUMNS.get(name, set())
        a, b = rows(ref[name], skip), rows(got[name], skip)
        if a != b:
            missing = len([r for r in a if r not in set(b)])
            extra = len([r for r in b if r not in set(a)])
            out.append(f"{name}: {len(a)} rows vs {len(b)} ({missing} missing, {extra} extra or changed)")
    return out
