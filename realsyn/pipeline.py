"""The one pipeline job: every stage from documents to dataset, in dependency order, resumable and audited.

``STAGES`` is the stage table: a name, the stages it runs after, the stage function (``run_<name>`` of the module
``realsyn.stages.<name>``), and the tables it reads and writes (their row counts go to ``gold.runs``). Adding a
stage is one module and one entry.

Every stage is retry-safe and skips work already done by itself (ingest merges on the document key, fetch and
embed only touch rows without a result, extraction and clustering replace their tables in one commit each), so
the pipeline simply runs the selected stages in order; after a crash, ``--from <stage>`` resumes. A stage whose
tables are all at the Delta versions its last run left them at (same config, same code) is skipped: a rerun with
nothing new writes no table but ``gold.runs``.

A run holds a lock in the storage location (realsyn.lock), writes one row per stage to ``gold.runs``
(realsyn.runs) and sends the full log (its own and the Spark JVM's) to ``<root>/_logs/<run_id>.log``; the
console gets one line per stage, a progress bar fed from Spark's status tracker while it runs (on a terminal),
and the stage's summary (realsyn.console).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from realsyn.config_sections import Config
from realsyn.console import (
    CONSOLE_WIDTH,
    SparkProgress,
    indent,
    log_dir,
    logging_to,
    say,
    table_lines,
    task_time_share,
    wrap,
)
from realsyn.contracts import (
    BRONZE_DOCUMENTS,
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    BRONZE_TEXTS,
    GOLD_CAPTIONS,
    GOLD_CONCEPT_COUNTS,
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
    SILVER_SENTENCE_PHRASES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
)
from realsyn.lock import Lock, pipeline_lock
from realsyn.runs import (
    FAILED,
    OK,
    SKIPPED,
    Stage,
    StageRun,
    code_version,
    config_hash,
    count_rows,
    last_runs,
    last_written,
    record,
    table_versions,
    unchanged_since,
)
from realsyn.stages import (
    balance,
    cluster_images,
    cluster_sentences,
    embed,
    export,
    extract_images,
    extract_sentences,
    fetch,
    generate,
    ingest,
    report,
    retrieve,
    semantic_dedup,
)
from realsyn.tables import Lakehouse

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_EXTRACTED = (SILVER_IMAGES, SILVER_IMAGE_REJECTS, SILVER_SENTENCES, SILVER_SENTENCE_REJECTS)
_EMBEDDINGS = (SILVER_IMAGE_EMBEDDINGS, SILVER_SENTENCE_EMBEDDINGS)

# The stage table, in an order that respects ``after`` (checked by :func:`check_order`).
STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        (),
        ingest.run_ingest,
        writes=(BRONZE_DOCUMENTS, BRONZE_TEXTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS),
        skip_unchanged=False,
    ),
    Stage(
        "fetch",
        ("ingest",),
        fetch.run_fetch,
        reads=(BRONZE_IMAGE_REFS,),
        writes=(BRONZE_FETCHED_IMAGES,),
    ),
    Stage(
        "extract_images",
        ("fetch",),
        extract_images.run_extract_images,
        reads=(BRONZE_FETCHED_IMAGES, BRONZE_IMAGE_REFS),
        writes=(SILVER_IMAGES, SILVER_IMAGE_REJECTS),
    ),
    Stage(
        "extract_sentences",
        ("ingest",),
        extract_sentences.run_extract_sentences,
        reads=(BRONZE_TEXTS,),
        writes=(SILVER_SENTENCES, SILVER_SENTENCE_REJECTS, SILVER_SENTENCE_PHRASES),
    ),
    Stage(
        "embed",
        ("extract_images", "extract_sentences"),
        embed.run_embed,
        reads=(SILVER_IMAGES, SILVER_SENTENCES),
        writes=(*_EMBEDDINGS, SILVER_IMAGE_EMBEDDING_REJECTS, SILVER_SENTENCE_EMBEDDING_REJECTS),
    ),
    Stage(
        "semantic_dedup",
        ("embed",),
        semantic_dedup.run_semantic_dedup,
        reads=(SILVER_IMAGES, SILVER_SENTENCES, *_EMBEDDINGS),
        writes=_EXTRACTED,
    ),
    Stage(
        "cluster_sentences",
        ("semantic_dedup",),
        cluster_sentences.run_cluster_sentences,
        reads=(SILVER_SENTENCE_EMBEDDINGS, SILVER_SENTENCES),
        writes=(SILVER_SENTENCE_CENTROIDS, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCE_CLUSTER_REJECTS),
    ),
    Stage(
        "retrieve",
        ("cluster_sentences",),
        retrieve.run_retrieve,
        reads=(SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGES, SILVER_SENTENCE_CLUSTERS, SILVER_SENTENCES),
        writes=(SILVER_RETRIEVAL, SILVER_RETRIEVAL_REJECTS),
    ),
    Stage(
        "cluster_images",
        ("semantic_dedup",),
        cluster_images.run_cluster_images,
        reads=(SILVER_IMAGE_EMBEDDINGS, SILVER_IMAGES),
        writes=(SILVER_IMAGE_CENTROIDS, SILVER_IMAGE_CLUSTERS, SILVER_IMAGE_CLUSTER_REJECTS),
    ),
    Stage(
        "generate",
        ("retrieve",),
        generate.run_generate,
        reads=(SILVER_RETRIEVAL, SILVER_IMAGES),
        writes=(GOLD_CAPTIONS, GOLD_IMAGE_TAGS, GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS),
    ),
    Stage(
        "balance",
        ("generate", "cluster_images"),
        balance.run_balance,
        reads=(GOLD_SYNTHETIC_TEXTS, SILVER_IMAGE_CLUSTERS),
        writes=(GOLD_DATASET, GOLD_DATASET_REJECTS, GOLD_CONCEPT_COUNTS),
    ),
    Stage(
        "export",
        ("balance",),
        export.run_export,
        reads=(GOLD_DATASET,),
        check=export.export_root,
        skip_unchanged=False,
    ),
    Stage(
        "report",
        ("export",),
        report.run_report,
        reads=(GOLD_DATASET,),
        check=report.report_root,
        skip_unchanged=False,
    ),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# Stages whose summary is repeated at the end of a run: gold size per scale, exports, the report page.


def check_config(cfg: Config, stages: Sequence[Stage]) -> None:
    """Raise ConfigError for a setting that one of ``stages`` cannot work with (e.g. the report's folder when the
    tables are in object storage), so that the run stops before its first stage rather than at that one."""
    for stage in stages:
        if stage.check is not None:
            stage.check(cfg)


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
    fetch`` fetches the same images as the run that ingested them)."""
    if not cfg.pipeline.demo_corpus:
        return cfg
    from realsyn.demo_corpus import with_demo_inputs

    return with_demo_inputs(cfg)


def demo_corpus(cfg: Config, spark: SparkSession) -> str:
    """Write the demo corpus of ``cfg.demo`` (unless it is there already); what it holds and how long that took."""
    from realsyn.demo_corpus import generate

    t0 = time.monotonic()
    out = generate(cfg.demo, spark)
    seconds = time.monotonic() - t0
    if cfg.demo.kind == "generated":
        from realsyn.corpus_generator import MANIFEST, summary

        held = summary(json.loads((out / MANIFEST).read_text(encoding="utf-8")))
    else:
        held = f"{cfg.demo.documents:,} documents"
    return f"{out} ({cfg.demo.kind}: {held}; {seconds:.1f} s)"


def _run(
    cfg: Config, stages: Sequence[Stage], run_id: str, log_file: Path, lock: Lock | None, console: TextIO
) -> PipelineSummary:
    from realsyn.spark import get_spark

    header = f"realsyn pipeline run {run_id}: {', '.join(s.name for s in stages)}"
    say(console, "\n".join(wrap(header, CONSOLE_WIDTH, "", 2)))
    say(console, f"  log: {log_file}")
    if lock is not None and lock.took_over is not None:
        say(console, f"  took over the lock of run {lock.took_over.get('run_id', '?')}, which is no longer running")
    cfg = run_config(cfg)
    t0 = time.monotonic()
    spark = get_spark(cfg.spark, jvm_log=log_file)
    spark.sparkContext.setLogLevel("WARN")
    say(console, f"  spark {spark.version} ({spark.sparkContext.master}) ready in {time.monotonic() - t0:.1f} s")
    if cfg.pipeline.demo_corpus and any(s.name == "ingest" for s in stages):
        say(console, "\n".join(wrap(f"  demo corpus: {demo_corpus(cfg, spark)}", CONSOLE_WIDTH, "", 4)))
    lakehouse = Lakehouse(spark, cfg.storage)
    cfg_hash, version = config_hash(cfg), code_version()
    log.info("run %s: config %s, code %s, stages %s", run_id, cfg_hash, version, [s.name for s in stages])

    last = last_runs(lakehouse)
    written = last_written(last, STAGES)
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
            say(console, f"{label:<28} skipped: {detail}")
            continue
        log.info("stage %s started", stage.name)
        rows_in = count_rows(lakehouse, stage.reads)
        progress = SparkProgress(spark.sparkContext, label, sys.stderr)
        spark.sparkContext.setJobGroup(stage.name, f"realsyn pipeline {run_id}: {stage.name}")
        try:
            with progress:
                summary = stage.run(lakehouse, cfg)
                rows_out = count_rows(lakehouse, stage.writes)
        except Exception as e:
            log.exception("stage %s failed", stage.name)
            ended = datetime.now(timezone.utc)
            detail = f"{type(e).__name__}: {e}"
            busy = task_time_share(spark.sparkContext, started, ended)
            run = StageRun(stage.name, i, FAILED, started, ended, rows_in, {}, busy, detail[:4000])
            runs.append(run)
            failed = f"{label:<28} FAILED after {run.seconds:.1f} s: {detail.splitlines()[0][:300]}"
            say(console, "\n".join(wrap(failed, CONSOLE_WIDTH, "", 6)))
            say(console, f"  traceback and Spark's log: {log_file}")
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
        say(console, f"{label:<28} ok  {run.seconds:7.1f} s")
        text = str(summary).strip()
        if text:
            say(console, indent(text))
    tables: dict[str, int] = {}
    for run in runs:  # counted after each stage: a table's last writer in this run has its final count
        tables.update(run.rows_out)
    summary = PipelineSummary(run_id, log_file, tuple(runs), tables)  # in the order the stages wrote them
    say(console, str(summary))
    return summary
