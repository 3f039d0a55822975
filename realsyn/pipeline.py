"""The one pipeline job: every stage from documents to dataset, in dependency order, resumable and audited.

``STAGES`` is the stage table: a name, the stages it runs after, the stage function (``module:function``, imported
only when the stage runs), and the tables it reads and writes (their row counts go to ``gold.runs``). Adding a
stage is one entry.

Every stage is retry-safe and skips work already done by itself (ingest merges on the document key, fetch and
embed only touch rows without a result, extraction and clustering replace their tables in one commit each), so
the pipeline simply runs the selected stages in order; after a crash, ``--from <stage>`` resumes. A stage whose
tables are all at the Delta versions its last run left them at (same config, same code) is skipped: a rerun with
nothing new writes no table but ``gold.runs``.

A run holds a lock in the storage location (realsyn.lock), writes one row per stage to
``gold.runs`` and sends the full log (its own and the Spark JVM's) to ``<root>/_logs/<run_id>.log``; the console
gets one line per stage, a progress bar fed from Spark's status tracker while it runs (on a terminal), and the
stage's summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pyspark import SparkContext
from pyspark.sql import functions as F

from realsyn import __version__
from realsyn.config import Config
from realsyn.contracts import (
    BRONZE_DOCUMENTS,
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    BRONZE_TEXTS,
    GOLD_CAPTIONS,
    GOLD_DATASET,
    GOLD_DATASET_REJECTS,
    GOLD_IMAGE_TAGS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    RUNS,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTER_REJECTS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDING_REJECTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_RETRIEVAL_REJECTS,
    SILVER_SENTENCE_CENTROIDS,
    SILVER_SENTENCE_CLUSTER_REJECTS,
    SILVER_SENTENCE_CLUSTERS,
    SILVER_SENTENCE_EMBEDDING_REJECTS,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
    Table,
)
from realsyn.lock import Lock, lock_path, pipeline_lock
from realsyn.tables import Lakehouse

if TYPE_CHECKING:
    from realsyn.images import ImagesSummary
    from realsyn.sentences import SentencesSummary

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass(frozen=True)
class Stage:
    """One entry of the stage table.

    ``run`` names the stage function ``run_<stage>(lakehouse, cfg) -> summary`` as ``module:function``; it is
    imported when the stage runs. ``after``: the stages whose output it needs. ``reads`` / ``writes``: tables
    whose row counts are measured before / after it (``gold.runs``). ``check``, a ``module:function`` of the
    config alone that raises ConfigError, runs before the first stage of a run that includes this one.
    ``skip_unchanged``: skip the stage when nothing it reads or writes changed since its last run (see
    :func:`unchanged_since`); false where inputs or outputs are files, not tables (ingest, export, report).
    """

    name: str
    after: tuple[str, ...]
    run: str
    reads: tuple[Table, ...] = ()
    writes: tuple[Table, ...] = ()
    check: str | None = None
    skip_unchanged: bool = True

    @property
    def module(self) -> str:
        """The module that holds the stage function."""
        return self.run.partition(":")[0]

    def function(self) -> Callable[[Lakehouse, Config], object]:
        """The stage function."""
        fn: Callable[[Lakehouse, Config], object] = _imported(self.run)
        return fn


def _imported(ref: str) -> Any:
    """The object a ``module:name`` reference names, its module imported."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_EXTRACTED = (SILVER_IMAGES, SILVER_IMAGE_REJECTS, SILVER_SENTENCES, SILVER_SENTENCE_REJECTS)
_EMBEDDINGS = (SILVER_IMAGE_EMBEDDINGS, SILVER_SENTENCE_EMBEDDINGS)

# The stage table, in an order that respects ``after`` (checked by :func:`check_order`).
STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        (),
        "realsyn.ingest:run_ingest",
        writes=(BRONZE_DOCUMENTS, BRONZE_TEXTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS),
        skip_unchanged=False,
    ),
    Stage(
        "fetch_images",
        ("ingest",),
        "realsyn.fetch:run_fetch_images",
        reads=(BRONZE_IMAGE_REFS,),
        writes=(BRONZE_FETCHED_IMAGES,),
    ),
    Stage(
        "extract_images",
        ("fetch_images",),
        "realsyn.images:run_extract_images",
        reads=(BRONZE_FETCHED_IMAGES, BRONZE_IMAGE_REFS),
        writes=(SILVER_IMAGES, SILVER_IMAGE_REJECTS),
    ),
    Stage(
        "extract_sentences",
        ("ingest",),
        "realsyn.sentences:run_extract_sentences",
        reads=(BRONZE_TEXTS,),
        writes=(SILVER_SENTENCES, SILVER_SENTENCE_REJECTS),
    ),
    Stage(
        "embed",
        ("extract_images", "extract_sentences"),
        "realsyn.embed:run_embed",
        reads=(SILVER_IMAGES, SILVER_SENTENCES),
        writes=(*_EMBEDDINGS, SILVER_IMAGE_EMBEDDING_REJECTS, SILVER_SENTENCE_EMBEDDING_REJECTS),
    ),
    Stage(
        "semantic_dedup",
        ("embed",),
        "realsyn.pipeline:run_semantic_dedup",
        reads=(BRONZE_FETCHED_IMAGES, BRONZE_TEXTS, *_EMBEDDINGS),
        writes=_EXTRACTED,
    ),
    Stage(
        "cluster_sentences",
        ("semantic_dedup",),
        "realsyn.clustering:run_cluster_sentences",
        reads=(SILVER_SENTENCE_EMBEDDINGS, SILVER_SENTENCES),
        writes=(SILVER_SENTENCE_CENTROIDS, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCE_CLUSTER_REJECTS),
    ),
    Stage(
        "retrieve",
        ("cluster_sentences",),
        "realsyn.retrieval:run_retrieve",
        reads=(SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGES, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCES),
        writes=(SILVER_RETRIEVAL, SILVER_RETRIEVAL_REJECTS),
    ),
    Stage(
        "cluster_images",
        ("semantic_dedup",),
        "realsyn.clustering:run_cluster_images",
        reads=(SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGES),
        writes=(SILVER_IMAGE_CENTROIDS, SILVER_IMAGE_CLUSTERS, SILVER_IMAGE_CLUSTER_REJECTS),
    ),
    Stage(
        "generate",
        ("retrieve",),
        "realsyn.generate:run_generate",
        reads=(SILVER_RETRIEVAL, SILVER_IMAGES),
        writes=(GOLD_CAPTIONS, GOLD_IMAGE_TAGS, GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS),
    ),
    Stage(
        "balance",
        ("generate", "cluster_images"),
        "realsyn.balance:run_balance",
        reads=(GOLD_SYNTHETIC_TEXTS, SILVER_IMAGE_CLUSTERS),
        writes=(GOLD_DATASET, GOLD_DATASET_REJECTS),
    ),
    Stage(
        "export",
        ("balance",),
        "realsyn.export:run_export",
        reads=(GOLD_DATASET,),
        check="realsyn.export:export_root",
        skip_unchanged=False,
    ),
    Stage(
        "report",
        ("export",),
        "realsyn.report:run_report",
        reads=(GOLD_DATASET,),
        check="realsyn.report:report_root",
        skip_unchanged=False,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Stages whose summary is repeated at the end of a run: gold size per scale, exports, the report page.
CONSOLE_WIDTH = 120  # what the pipeline prints fits a terminal this wide


def check_config(cfg: Config, stages: Sequence[Stage]) -> None:
    """Raise ConfigError for a setting that one of ``stages`` cannot work with (e.g. the report's folder when the
    tables are in object storage), so that the run stops before its first stage rather than at that one."""
    for stage in stages:
        if stage.check is not None:
            _imported(stage.check)(cfg)


def check_order(stages: Sequence[Stage]) -> None:
    """Raise ValueError unless every stage comes after the stages it names in ``after`` (and names are unique)."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} appears twice")
        missing = [d for d in stage.after if d not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} runs after {missing}, which come later or do not exist")
        seen.add(stage.name)


check_order(STAGES)


class StageSelectionError(ValueError):
    """A --from / --until / --only value names no stage, or the selection is empty; the message names the flag."""


def select_stages(
    start: str | None = None,
    until: str | None = None,
    only: Sequence[str] = (),
    stages: Sequence[Stage] = STAGES,
) -> list[Stage]:
    """The stages to run, in table order: ``only`` these, or those from ``start`` to ``until`` (inclusive).

    ``--from`` and ``--until`` count positions in the table (a resume after a crash in stage X is ``--from X``);
    they cannot be combined with ``--only``.
    """
    names = [s.name for s in stages]

    def position(flag: str, name: str) -> int:
        if name not in names:
            raise StageSelectionError(f"{flag}: unknown stage {name!r}; the stages are {', '.join(names)}")
        return names.index(name)

    if only and (start is not None or until is not None):
        raise StageSelectionError("--only cannot be combined with --from or --until")
    if only:
        wanted = {position("--only", n) for n in only}
        return [s for i, s in enumerate(stages) if i in wanted]
    lo = position("--from", start) if start is not None else 0
    hi = position("--until", until) if until is not None else len(names) - 1
    if lo > hi:
        raise StageSelectionError(f"--from {start} comes after --until {until}: nothing to run")
    return list(stages[lo : hi + 1])


# ---------------------------------------------------------------------------------------------------------------
# The semantic_dedup stage


@dataclass(frozen=True)
class SemanticDedupSummary:
    """Extraction rerun now that embeddings exist: the funnel of each side that ran, or why a side did not."""

    images: ImagesSummary | None
    sentences: SentencesSummary | None
    not_run: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = []
        for name, summary in (("images", self.images), ("sentences", self.sentences)):
            step = None if summary is None else next((s for s in summary.steps if s.step == "semantic_dedup"), None)
            if step is not None:
                parts.append(
                    f"{name} {step.rows_in:,} -> {step.rows_out:,} ({step.rows_rejected:,} semantic duplicates)"
                )
            else:
                parts.append(f"{name}: not run ({self.not_run.get(name, 'no embeddings of the configured model')})")
        return "semantic dedup: " + "; ".join(parts)


def _semantic_dedup_blocker(cfg: Config, side: str) -> str | None:
    """Why the semantic dedup of ``side`` (images / sentences) cannot run with this config, or None."""
    from realsyn.semdedup import refusal

    section = cfg.images.semantic_dedup if side == "images" else cfg.sentences.semantic_dedup
    key = f"{'images' if side == 'images' else 'sentences'}.semantic_dedup"
    if not section.enabled:
        return f"{key}.enabled is false"
    return refusal(section.model_id or cfg.embed.model, cfg.embed)


def run_semantic_dedup(lakehouse: Lakehouse, cfg: Config) -> SemanticDedupSummary:
    """Rerun image and sentence extraction, whose semantic dedup step applies wherever embeddings exist.

    Extraction recomputes its silver tables from bronze and replaces them in one commit each, so this is as
    retry-safe as extraction itself; the stages after it read only images and sentences still in
    ``silver.images`` / ``silver.sentences``. A side whose dedup cannot run (switched off, or embeddings of a
    random-weight model, which never drive dedup) is not rerun.
    """
    from realsyn.images import run_extract_images
    from realsyn.sentences import run_extract_sentences

    not_run = {side: why for side in ("images", "sentences") if (why := _semantic_dedup_blocker(cfg, side))}
    images = None if "images" in not_run else run_extract_images(lakehouse, cfg)
    sentences = None if "sentences" in not_run else run_extract_sentences(lakehouse, cfg)
    return SemanticDedupSummary(images, sentences, not_run)


# ---------------------------------------------------------------------------------------------------------------
# gold.runs


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


def last_written(last: dict[str, LastRun], stages: Sequence[Stage] = STAGES) -> dict[str, int]:
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
    """Write ``runs`` as rows of gold.runs in one commit (a MERGE on run id and stage: a retried write adds
    nothing)."""
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
        lakehouse.insert_new(RUNS, lakehouse.spark.createDataFrame(rows, RUNS.schema))


# ---------------------------------------------------------------------------------------------------------------
# Console and logs


def task_time_share(sc: SparkContext, start: datetime, end: datetime) -> float | None:
    """The task time of the Spark stages submitted between ``start`` and ``end`` (their executorRunTime, from
    Spark's status store, which the UI shows and which is kept with the UI off) over the time of the task slots in
    that span: (end - start) x the tasks the active executors run at once (their ``maxTasks`` at the end). None when
    the store cannot be read; stages beyond its retention (``spark.ui.retainedStages``, 1,000) are not counted."""
    try:
        store = sc._jsc.sc().statusStore()
        gateway: Any = sc._gateway
        no_quantiles = gateway.new_array(gateway.jvm.double, 0)
        stages = store.stageList(None, False, False, no_quantiles, getattr(store, "stageList$default$5")())
        lo, hi = start.timestamp() * 1000, end.timestamp() * 1000
        task_ms = 0
        it = stages.iterator()
        while it.hasNext():
            stage = it.next()
            submitted = stage.submissionTime()
            if submitted.isDefined() and lo <= submitted.get().getTime() <= hi:
                task_ms += stage.executorRunTime()
        slots = 0
        executors = store.executorList(True).iterator()
        while executors.hasNext():
            slots += executors.next().maxTasks()
    except Exception:  # a Spark without this (private) API, or the JVM going away
        log.debug("Spark's status store could not be read", exc_info=True)
        return None
    slots_ms = (hi - lo) * slots
    return task_ms / slots_ms if slots_ms > 0 else None


class SparkProgress:
    """Polls Spark's status tracker while a stage runs: a progress bar of its tasks (tqdm, on ``stream`` when it is
    a terminal), counting the tasks of every Spark stage seen since the start."""

    def __init__(self, sc: SparkContext, label: str, stream: TextIO, interval_s: float = 0.25) -> None:
        self.sc = sc
        self.label = label
        self.stream = stream
        self.interval_s = interval_s
        self._tasks: dict[int, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="spark-progress", daemon=True)
        self._bar: Any = None

    def _poll(self) -> None:
        tracker = self.sc.statusTracker()
        while not self._stop.wait(self.interval_s):
            try:
                active = tracker.getActiveStageIds()
                for sid in active:
                    info = tracker.getStageInfo(sid)
                    if info is not None:
                        self._tasks[sid] = (info.numTasks, info.numCompletedTasks)
                for sid, (total, _) in list(self._tasks.items()):
                    if sid not in active:
                        self._tasks[sid] = (total, total)
            except Exception:  # the JVM is going away (a failing stage, the end of the run)
                log.debug("status tracker poll failed", exc_info=True)
                continue
            if self._bar is not None and self._tasks:
                self._bar.total = sum(t for t, _ in self._tasks.values())
                self._bar.n = sum(d for _, d in self._tasks.values())
                self._bar.refresh()

    def __enter__(self) -> SparkProgress:
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(desc=self.label, total=0, unit=" tasks", file=self.stream, leave=False, dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.close()


def log_dir(cfg: Config) -> Path:
    """Where run logs go: ``pipeline.log_dir``, else ``<storage.root>/_logs`` for a local root, else ./realsyn-logs."""
    if cfg.pipeline.log_dir is not None:
        return Path(cfg.pipeline.log_dir)
    lock = lock_path(cfg.storage)
    return lock.parent / "_logs" if lock is not None else Path("realsyn-logs")


@contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """Send Python logging (INFO and up) and warnings to ``path`` only, for the duration."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("py4j").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers, root.level = saved[0], saved[1]
        handler.close()


# ---------------------------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class PipelineSummary:
    """What one pipeline run did: each stage's run, and the row count of every table the stages write."""

    run_id: str
    log: Path
    runs: tuple[StageRun, ...]
    tables: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No stage failed."""
        return all(r.status != FAILED for r in self.runs)

    def __str__(self) -> str:
        counts = ", ".join(f"{sum(r.status == s for r in self.runs)} {s}" for s in (OK, SKIPPED, FAILED))
        lines = [f"run {self.run_id}: {len(self.runs)} stage{'s' * (len(self.runs) != 1)}: {counts}"]
        lines += table_lines(self.tables)
        # Where a user looks next (each stage's own summary was printed once, under the stage).
        for run in self.runs:
            if run.status == OK and getattr(run.summary, "page", None):
                lines.append(f"report page:  {run.summary.page}")  # type: ignore[attr-defined]
            if run.status == OK and getattr(run.summary, "root", None):
                lines.append(f"exports:      {run.summary.root}")  # type: ignore[attr-defined]
        lines.append(f"stage runs:   {RUNS} (run_id = '{self.run_id}')")
        lines.append(f"full log:     {self.log}")
        return "\n".join(lines)


def table_lines(tables: dict[str, int], width: int = CONSOLE_WIDTH) -> list[str]:
    """Rows per table, a line (wrapped at ``width``) per layer in pipeline order, the empty tables on one more."""
    lines = ["rows per table:"]
    for layer in ("bronze", "silver", "gold"):
        items = [f"{t.partition('.')[2]} {n:,}" for t, n in tables.items() if t.startswith(f"{layer}.") and n]
        if items:
            lines += _wrap(", ".join(items), width, f"  {layer:<8}", 10)
    empty = [t for t, n in tables.items() if not n]
    if empty:
        lines += _wrap(", ".join(empty), width, "  empty:  ", 10)
    return lines


def _indent(text: str, width: int = CONSOLE_WIDTH) -> str:
    """A stage's summary under its line, wrapped to the console's width (paths are not broken)."""
    return "\n".join(part for line in text.splitlines() for part in _wrap(line, width, 6, 8))


def _wrap(text: str, width: int, indent: int | str, hang: int) -> list[str]:
    first = indent if isinstance(indent, str) else " " * indent
    return textwrap.wrap(
        text, width, initial_indent=first, subsequent_indent=" " * hang, break_long_words=False, break_on_hyphens=False
    )


def run_pipeline(cfg: Config, stages: Sequence[Stage], console: TextIO = sys.stdout) -> PipelineSummary:
    """Run ``stages`` in order under the storage lock, recording each in gold.runs and printing its summary.

    Raises :class:`PipelineLocked` before any work when another pipeline holds the lock. A failing stage is
    recorded as ``failed`` with its error, the rest are not run, and the summary says so.
    """
    run_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    logs = log_dir(cfg)
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{run_id}.log"
    lock = pipeline_lock(cfg.storage, run_id, cfg.pipeline.lock_heartbeat_s, cfg.pipeline.lock_stale_after_s)
    if lock is not None:
        lock.acquire()
    try:
        with logging_to(log_file):
            return _run(cfg, stages, run_id, log_file, lock, console)
    finally:
        if lock is not None:
            lock.release()


def run_config(cfg: Config) -> Config:
    """The config every stage of a run reads: with ``pipeline.demo_corpus``, ingest's inputs are the demo corpus
    and fetch allows its ``file://`` images, whichever stage the run starts from (a run resumed ``--from
    fetch_images`` fetches the same images as the run that ingested them)."""
    if not cfg.pipeline.demo_corpus:
        return cfg
    from realsyn.demo_corpus import with_demo_inputs

    return with_demo_inputs(cfg)


def _say(console: TextIO, text: str) -> None:
    console.write(text + "\n")
    console.flush()
    log.info("console: %s", text)


def _run(
    cfg: Config, stages: Sequence[Stage], run_id: str, log_file: Path, lock: Lock | None, console: TextIO
) -> PipelineSummary:
    from realsyn.spark import get_spark

    _say(console, f"realsyn pipeline run {run_id}: {', '.join(s.name for s in stages)}")
    _say(console, f"  log: {log_file}")
    if lock is not None and lock.took_over is not None:
        _say(console, f"  took over the lock of run {lock.took_over.get('run_id', '?')}, which is no longer running")
    cfg = run_config(cfg)
    if cfg.pipeline.demo_corpus and any(s.name == "ingest" for s in stages):
        from realsyn.demo_corpus import generate

        t0 = time.monotonic()
        out = generate(cfg.demo)
        _say(console, f"  demo corpus: {out} ({cfg.demo.documents:,} documents, {time.monotonic() - t0:.1f} s)")
    t0 = time.monotonic()
    spark = get_spark(cfg.spark, jvm_log=log_file)
    spark.sparkContext.setLogLevel("WARN")
    _say(console, f"  spark {spark.version} ({spark.sparkContext.master}) ready in {time.monotonic() - t0:.1f} s")
    lakehouse = Lakehouse(spark, cfg.storage)
    cfg_hash, version = config_hash(cfg), code_version()
    log.info("run %s: config %s, code %s, stages %s", run_id, cfg_hash, version, [s.name for s in stages])

    last = last_runs(lakehouse)
    written = last_written(last)
    runs: list[StageRun] = []
    for i, stage in enumerate(stages, start=1):
        label = f"[{i}/{len(stages)}] {stage.name}"
        started = datetime.now(timezone.utc)
        before = table_versions(lakehouse, (*stage.reads, *stage.writes))
        previous = last.get(stage.name)
        if previous is not None and unchanged_since(stage, previous, written, before, cfg_hash, version):
            detail = f"nothing it reads or writes changed since run {previous.run_id}"
            run = StageRun(stage.name, i, SKIPPED, started, datetime.now(timezone.utc), {}, previous.rows_out, None)
            run = dataclasses.replace(run, detail=detail, table_versions=before)
            record(lakehouse, run_id, cfg_hash, version, [run])
            runs.append(run)
            log.info("stage %s skipped: %s", stage.name, detail)
            _say(console, f"{label:<28} skipped: {detail}")
            continue
        log.info("stage %s started", stage.name)
        rows_in = count_rows(lakehouse, stage.reads)
        progress = SparkProgress(spark.sparkContext, label, sys.stderr)
        spark.sparkContext.setJobGroup(stage.name, f"realsyn pipeline {run_id}: {stage.name}")
        try:
            with progress:
                summary = stage.function()(lakehouse, cfg)
                rows_out = count_rows(lakehouse, stage.writes)
        except Exception as e:
            log.exception("stage %s failed", stage.name)
            ended = datetime.now(timezone.utc)
            detail = f"{type(e).__name__}: {e}"
            busy = task_time_share(spark.sparkContext, started, ended)
            run = StageRun(stage.name, i, FAILED, started, ended, rows_in, {}, busy, detail[:4000])
            runs.append(run)
            failed = f"{label:<28} FAILED after {run.seconds:.1f} s: {detail.splitlines()[0][:300]}"
            _say(console, "\n".join(_wrap(failed, CONSOLE_WIDTH, "", 6)))
            _say(console, f"  traceback and Spark's log: {log_file}")
            try:
                record(lakehouse, run_id, cfg_hash, version, [run])
            except Exception:
                log.exception("could not record the failed stage in %s", RUNS)
            break
        ended = datetime.now(timezone.utc)
        after = table_versions(lakehouse, (*stage.reads, *stage.writes))
        busy = task_time_share(spark.sparkContext, started, ended)
        run = StageRun(stage.name, i, OK, started, ended, rows_in, rows_out, busy, None, summary, after)
        record(lakehouse, run_id, cfg_hash, version, [run])
        written.update({t.name: after[t.name] for t in stage.writes if t.name in after})
        runs.append(run)
        log.info("stage %s done in %.1f s: %s", stage.name, run.seconds, summary)
        _say(console, f"{label:<28} ok  {run.seconds:7.1f} s")
        text = str(summary).strip()
        if text:
            _say(console, _indent(text))
    tables: dict[str, int] = {}
    for run in runs:  # counted after each stage: a table's last writer in this run has its final count
        tables.update(run.rows_out)
    summary = PipelineSummary(run_id, log_file, tuple(runs), tables)  # in the order the stages wrote them
    _say(console, str(summary))
    return summary
