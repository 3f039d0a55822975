"""A stage's entry in the stage table and its runs in ``gold.runs``: what each run did, and whether a stage may be
skipped because nothing it reads or writes changed since its last run with the same config and code."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pyspark.sql import functions as F

from realsyn import __version__
from realsyn.config_sections import Config
from realsyn.contracts import RUNS, Table
from realsyn.tables import Lakehouse

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Stage:
    """One entry of the stage table.

    ``run``: the stage function ``run_<stage>(lakehouse, cfg) -> summary``, in ``realsyn.stages.<stage>``.
    ``after``: the stages whose output it needs. ``reads`` / ``writes``: tables whose row counts are measured
    before / after it (``gold.runs``). ``check``, a function of the config alone that raises ConfigError, runs
    before the first stage of a run that includes this one.
    ``skip_unchanged``: skip the stage when nothing it reads or writes changed since its last run (see
    :func:`unchanged_since`); false where inputs or outputs are files, not tables (ingest, export, report).
    """

    name: str
    after: tuple[str, ...]
    run: Callable[[Lakehouse, Config], object]
    reads: tuple[Table, ...] = ()
    writes: tuple[Table, ...] = ()
    check: Callable[[Config], object] | None = None
    skip_unchanged: bool = True


@dataclass(frozen=True)
class StageRun:
    """What one stage of one run did (one row of gold.runs, and the stage's summary)."""

    stage: str
    index: int
    status: str
    started_at: datetime
    ended_at: datetime
    rows_in: dict[str, int]
    rows_out: dict[str, int]
    busy_share: float | None
    detail: str | None = None
    summary: object = None
    table_versions: dict[str, int] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        """Wall time of the stage."""
        return (self.ended_at - self.started_at).total_seconds()


def config_hash(cfg: Config) -> str:
    """SHA-256 (first 16 hex digits) of the settings that decide what the stages compute, overrides included:
    the whole configuration but where the tables live, how Spark runs and how the pipeline job runs (``storage``,
    ``spark``, ``pipeline``), so a lake moved or run on another cluster is the same lake."""
    return hashlib.sha256(cfg.model_dump_json(exclude={"storage", "spark", "pipeline"}).encode()).hexdigest()[:16]


def code_version() -> str:
    """The package version, plus the git commit of the source tree (``+dirty`` with local changes) if it has one."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return __version__
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"


def count_rows(lakehouse: Lakehouse, tables: Sequence[Table]) -> dict[str, int]:
    """Row counts of those of ``tables`` that exist, by table name."""
    return {t.name: lakehouse.read(t).count() for t in tables if lakehouse.exists(t)}


def table_versions(lakehouse: Lakehouse, tables: Sequence[Table]) -> dict[str, int]:
    """Delta versions of those of ``tables`` that exist, by table name."""
    return {t.name: lakehouse.version(t) for t in tables if lakehouse.exists(t)}


@dataclass(frozen=True)
class LastRun:
    """The last ``ok`` or ``skipped`` row of a stage in gold.runs: what its skip check compares with."""

    run_id: str
    config_hash: str
    code_version: str
    table_versions: dict[str, int]
    rows_out: dict[str, int]


def last_runs(lakehouse: Lakehouse) -> dict[str, LastRun]:
    """The last ``ok`` or ``skipped`` run of every stage, by stage name (gold.runs is small: one row per stage
    and run)."""
    if not lakehouse.exists(RUNS):
        return {}
    rows = lakehouse.read(RUNS).where(F.col("status").isin(OK, SKIPPED)).orderBy("ended_at").collect()
    return {
        r["stage"]: LastRun(
            r["run_id"],
            r["config_hash"],
            r["code_version"],
            dict(r.asDict().get("table_versions") or {}),
            dict(r["rows_out"]),
        )
        for r in rows
    }


def last_written(last: dict[str, LastRun], stages: Sequence[Stage]) -> dict[str, int]:
    """The version each table was left at by the last recorded stage that writes it (runs in stage order, so the
    stage later in the table wins: semantic_dedup's rewrite of the extraction tables)."""
    written: dict[str, int] = {}
    for stage in stages:
        if stage.name in last:
            versions = last[stage.name].table_versions
            written.update({t.name: versions[t.name] for t in stage.writes if t.name in versions})
    return written


def unchanged_since(
    stage: Stage, last: LastRun | None, written: dict[str, int], now: dict[str, int], cfg_hash: str, version: str
) -> bool:
    """Whether ``stage`` may be skipped: it ran before with this config and code, every table it reads is at the
    version that run read (``now`` holds the current versions), and every table it writes is at the version the
    pipeline last left it at (nobody wrote it since)."""
    if not stage.skip_unchanged or last is None or (last.config_hash, last.code_version) != (cfg_hash, version):
        return False
    reads_same = all(now.get(t.name) == last.table_versions.get(t.name) for t in stage.reads)
    return reads_same and all(now.get(t.name) == written.get(t.name) for t in stage.writes)


def record(lakehouse: Lakehouse, run_id: str, cfg_hash: str, version: str, runs: Sequence[StageRun]) -> None:
    """Write ``runs`` as rows of gold.runs in one commit: an append, since no other commit can hold rows of
    ``run_id`` (each run mints its own, and records each stage once)."""
    rows = [
        (
            run_id,
            run.stage,
            run.index,
            run.status,
            run.started_at,
            run.ended_at,
            run.seconds,
            run.rows_in,
            run.rows_out,
            run.table_versions,
            run.busy_share,
            cfg_hash,
            version,
            run.detail,
        )
        for run in runs
    ]
    if rows:
        lakehouse.append(RUNS, lakehouse.spark.createDataFrame(rows, RUNS.schema))
