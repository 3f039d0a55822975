"""Image acquisition: bronze.image_refs -> bronze.fetched_images, one row per distinct URL with a final status.

Inside each Spark task, ``udfs.fetch`` keeps many requests in flight on one event loop (per-host limits,
timeouts, retries of transient failures, SSRF and size protection, decode check). Each accepted image's row holds
its id (hash of the bytes), size and format, and, while ``fetch.perceptual_hash`` is on, its perceptual hash (of the
images that extract_images' quality filter keeps, while its perceptual dedup is on): that stage reads them instead
of the bytes. The pending URLs are fetched in commit batches of ``fetch.commit_every`` URLs; each batch is MERGEd
on ``url_id`` (an insert-only MERGE reads its source once, so every URL is fetched once), so a job killed mid-run
keeps every committed batch, loses only the batch in flight, and never duplicates a row. The rows per status that
the summary reports are counted by the tasks (an accumulator) and checked against the rows the MERGE reports
written; only when they differ (a task run twice, a concurrent run) are they read back from the table.

A rerun fetches only URLs without a row (every row holds a final status). ``retry_failed`` also refetches the
rows whose failure was transient (``retryable``: timeouts, connection errors, HTTP 429 / 5xx) and replaces them
in place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pyarrow as pa
from pyspark import Accumulator, AccumulatorParam, StorageLevel
from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from realsyn.config import ConfigError
from realsyn.config_sections import Config, ExtractImagesConfig, FetchConfig
from realsyn.contracts import BRONZE_FETCHED_IMAGES, BRONZE_IMAGE_REFS
from realsyn.funnel import FunnelStep, write_funnel
from realsyn.tables import Lakehouse
from udfs.fetch_arrow import FetchProgress, StatusCounts, count_statuses, fetch_arrow
from udfs.fetch_schema import FetchOptions

log = logging.getLogger(__name__)

STAGE = "fetch"


@dataclass
class FetchSummary:
    """What one run fetched: URLs pending at the start, rows written per status, bytes and wall time."""

    pending: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0
    retry_failed: bool = False

    @property
    def fetched(self) -> int:
        """URLs that got a final status in this run."""
        return sum(self.by_status.values())

    @property
    def ok(self) -> int:
        """URLs fetched as a valid image."""
        return self.by_status.get("ok", 0)

    def __str__(self) -> str:
        statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(self.by_status.items(), key=lambda kv: -kv[1]))
        rate = self.fetched / self.seconds if self.seconds else 0.0
        return (
            f"fetch{' --retry-failed' if self.retry_failed else ''}: {self.fetched:,} of {self.pending:,} "
            f"pending URLs fetched in {self.seconds:,.1f} s ({rate:,.0f} URLs/s, "
            f"{self.bytes / max(self.seconds, 1e-9) / 1e6:,.2f} MB/s): {statuses or 'nothing to do'}"
        )


def fetch_options(
    fcfg: FetchConfig, content_prefix: str | None = None, images: ExtractImagesConfig | None = None
) -> FetchOptions:
    """The fetcher options of a config section: every setting the two share (lists as tuples), with images
    written under ``content_prefix`` if set (the section's own ``content_prefix`` is resolved by the caller), and
    the perceptual hashes of the images that ``images`` (the ``extract_images`` section, whose perceptual dedup reads
    them) keeps at its quality filter stored while ``fetch.perceptual_hash`` and that perceptual dedup are on."""
    shared = {f.name for f in dataclasses.fields(FetchOptions)} & set(FetchConfig.model_fields) - {"content_prefix"}
    values: dict[str, Any] = {name: getattr(fcfg, name) for name in shared}
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in values.items()}
    values["perceptual_hash"] = fcfg.perceptual_hash and images is not None and images.perceptual_dedup.enabled
    if values["perceptual_hash"] and images is not None:
        values["hash_min_short_side"] = images.min_short_side
        values["hash_max_aspect_ratio"] = images.max_aspect_ratio
    return FetchOptions(**values, content_prefix=content_prefix)


def content_prefix(lakehouse: Lakehouse, fcfg: FetchConfig) -> str | None:
    """Where image files go when ``fetch.content_store`` is ``files`` (None: bytes stay in the table)."""
    if fcfg.content_store == "table":
        return None
    if fcfg.content_prefix:
        return fcfg.content_prefix
    if lakehouse.storage.root is None:
        raise ConfigError(
            "fetch.content_prefix: required when fetch.content_store is 'files' and storage.catalog is set"
        )
    return lakehouse.location(BRONZE_FETCHED_IMAGES) + "_files"


def pending_urls(refs: DataFrame, fetched: DataFrame | None, retry_failed: bool = False) -> DataFrame:
    """Distinct ``(url_id, url)`` of ``refs`` without a final row in ``fetched`` (or with a transient one)."""
    urls = refs.filter(F.col("url").isNotNull()).select("url_id", "url").dropDuplicates(["url_id"])
    if fetched is None:
        return urls
    done = fetched.filter(~F.col("retryable")) if retry_failed else fetched
    return urls.join(done.select("url_id"), "url_id", "left_anti")


def fetch_urls(
    urls: DataFrame,
    fcfg: FetchConfig,
    prefix: str | None = None,
    counts: Accumulator[dict[str, list[int]]] | None = None,
    images: ExtractImagesConfig | None = None,
) -> DataFrame:
    """Fetch the ``url`` of every row of ``urls`` (``url_id``, ``url``) inside the tasks; one row per URL.

    ``counts`` (an accumulator of :class:`udfs.fetch_arrow.StatusCounts`) receives the rows and bytes per status
    that each task returned, once the task has returned them all. ``images``: the ``extract_images`` section,
    for the perceptual hashes (:func:`fetch_options`).
    """
    options = fetch_options(fcfg, prefix, images)
    rows_per_batch = fcfg.rows_per_batch
    interval = fcfg.progress_interval_s

    def fetch_partition(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        def report(progress: FetchProgress) -> None:
            print(f"realsyn.stages.fetch task: {progress.line()}", file=sys.stderr, flush=True)

        returned: dict[str, list[int]] = {}
        for batch in fetch_arrow(batches, options, rows_per_batch, report, interval):
            count_statuses(batch, returned)
            yield batch
        if counts is not None:
            counts.add(returned)

    return urls.select("url_id", "url").mapInArrow(fetch_partition, BRONZE_FETCHED_IMAGES.schema)


def _batch_stats(lakehouse: Lakehouse, part: DataFrame, committed_after: datetime) -> list[Row]:
    """Rows per status (and bytes) of the URLs of ``part`` as just committed, read back from the table.

    The time filter lets Delta skip every file written before this batch, and only small columns are read.
    Used only when the tasks' counts do not match what the MERGE wrote (a task retried, a concurrent writer).
    """
    table = lakehouse.read(BRONZE_FETCHED_IMAGES).filter(F.col("fetched_at") >= F.lit(committed_after))
    return (
        table.join(part.select("url_id"), "url_id", "left_semi")
        .groupBy("status")
        .agg(F.count("*").alias("n"), F.sum("n_bytes").alias("b"))
        .collect()
    )


def run_fetch(lakehouse: Lakehouse, cfg: Config, retry_failed: bool = False) -> FetchSummary:
    """Fetch every image URL of bronze.image_refs without a final status into bronze.fetched_images.

    ``retry_failed`` also refetches URLs whose last failure was transient, replacing their rows.
    """
    spark = lakehouse.spark
    fcfg = cfg.fetch
    prefix = content_prefix(lakehouse, fcfg)
    started = time.monotonic()
    summary = FetchSummary(retry_failed=retry_failed)
    if not lakehouse.exists(BRONZE_IMAGE_REFS):
        log.warning("%s does not exist: nothing to fetch", BRONZE_IMAGE_REFS)
        return summary
    lakehouse.create_if_absent(BRONZE_FETCHED_IMAGES)
    fetched_before = lakehouse.read(BRONZE_FETCHED_IMAGES)
    pending = pending_urls(lakehouse.read(BRONZE_IMAGE_REFS), fetched_before, retry_failed)
    # Materialised with its lineage cut: a commit to bronze.fetched_images must not re-evaluate what was pending.
    pending = pending.localCheckpoint(eager=True)
    try:
        summary.pending = pending.count()
        if summary.pending == 0:
            log.info("fetch: no pending URL")
            write_funnel(lakehouse, STAGE, fetch_funnel(lakehouse))
            return summary
        n_batches = math.ceil(summary.pending / fcfg.commit_every)
        tasks = fcfg.tasks or spark.sparkContext.defaultParallelism
        tasks = max(1, min(tasks, math.ceil(summary.pending / n_batches)))
        log.info("fetch: %d pending URLs in %d commit batch(es) of %d task(s)", summary.pending, n_batches, tasks)
        batch_of = F.pmod(F.xxhash64("url_id"), F.lit(n_batches))
        for b in range(n_batches):
            part = pending.filter(batch_of == b) if n_batches > 1 else pending
            committed_after = datetime.now(timezone.utc) - timedelta(minutes=10)  # executor clocks may differ a little
            # StatusCounts follows AccumulatorParam's protocol without importing pyspark (udfs stay Spark-free).
            counts = spark.sparkContext.accumulator({}, cast("AccumulatorParam[dict[str, list[int]]]", StatusCounts()))
            fetched = fetch_urls(part.repartition(tasks), fcfg, prefix, counts, cfg.extract_images)
            if retry_failed:
                # An update MERGE reads its source twice: materialise it so that no URL is fetched twice.
                fetched = fetched.persist(StorageLevel.MEMORY_AND_DISK)
            try:
                # Transient failures are replaced in place on --retry-failed; a final row is never touched.
                replace_when = "t.retryable" if retry_failed else None
                written = lakehouse.insert_new(BRONZE_FETCHED_IMAGES, fetched, replace_when)
            finally:
                fetched.unpersist()
            returned = counts.value
            n_returned = sum(n for n, _ in returned.values())
            if written != n_returned:
                # A task ran twice or another run committed some of these URLs first: count what was committed.
                log.info("fetch: tasks returned %d rows, MERGE wrote %d: counting from the table", n_returned, written)
                returned = {
                    r["status"]: [int(r["n"]), int(r["b"] or 0)] for r in _batch_stats(lakehouse, part, committed_after)
                }
            for status, (n, size) in returned.items():
                summary.by_status[status] = summary.by_status.get(status, 0) + n
                summary.bytes += size
            summary.seconds = time.monotonic() - started
            ok = summary.ok
            log.info(
                "fetch: batch %d/%d committed; running ok %d, failed %d, %.1f MB, %.2f MB/s, %.0f URLs/s",
                b + 1,
                n_batches,
                ok,
                summary.fetched - ok,
                summary.bytes / 1e6,
                summary.bytes / max(summary.seconds, 1e-9) / 1e6,
                summary.fetched / max(summary.seconds, 1e-9),
            )
    finally:
        pending.unpersist()
        summary.seconds = time.monotonic() - started
    write_funnel(lakehouse, STAGE, fetch_funnel(lakehouse))
    return summary


def fetch_funnel(lakehouse: Lakehouse) -> list[FunnelStep]:
    """From the tables: image references -> distinct URLs -> URLs fetched ``ok`` (the rows extract_images reads).

    A URL not fetched yet (pending, or the run stopped) counts as dropped until a run fetches it.
    """
    refs = lakehouse.read(BRONZE_IMAGE_REFS)
    urls = refs.select("url_id").distinct()
    n_refs, n_urls = refs.count(), urls.count()
    fetched = lakehouse.read(BRONZE_FETCHED_IMAGES).join(urls, "url_id", "left_semi")
    n_ok = fetched.where(F.col("status") == "ok").count()
    return [FunnelStep("distinct_urls", n_refs, n_urls), FunnelStep("fetch", n_urls, n_ok)]
