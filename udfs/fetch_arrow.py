"""The fetcher as a Spark task sees it: Arrow batches of URLs in, Arrow batches of fetch results out, with counts.

:func:`fetch_arrow` fetches the ``url`` of each input row with :func:`udfs.fetch.iter_fetch` and yields rows of
:data:`udfs.fetch_schema.ARROW_SCHEMA` (URLs and errors redacted), reporting a :class:`FetchProgress` as it goes;
:class:`StatusCounts` and :func:`count_statuses` sum rows and bytes per status so that the driver knows a write's
counts without reading it back. Pure: no Spark import; the Spark stage (``realsyn.stages.fetch``) calls
:func:`fetch_arrow` inside each task.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from udfs.fetch import OK, iter_fetch
from udfs.fetch_schema import ARROW_SCHEMA, FetchOptions
from udfs.urls import redact_text, redact_url


class StatusCounts:
    """Accumulator parameter (Spark's ``AccumulatorParam`` protocol) summing ``{status: [rows, bytes]}``.

    Tasks count what they return, so the driver knows the rows per status of a write without reading them back.
    """

    def zero(self, value: dict[str, list[int]]) -> dict[str, list[int]]:
        """An empty count."""
        return {}

    def addInPlace(self, value1: dict[str, list[int]], value2: dict[str, list[int]]) -> dict[str, list[int]]:
        """Add ``value2`` into ``value1``."""
        for status, (rows, size) in value2.items():
            total = value1.setdefault(status, [0, 0])
            total[0] += rows
            total[1] += size
        return value1


def count_statuses(batch: pa.RecordBatch, into: dict[str, list[int]]) -> None:
    """Add the rows and ``n_bytes`` per ``status`` of ``batch`` (of :data:`ARROW_SCHEMA`) to ``into``."""
    for status, size in zip(batch.column("status").to_pylist(), batch.column("n_bytes").to_pylist(), strict=True):
        total = into.setdefault(status, [0, 0])
        total[0] += 1
        total[1] += size or 0


@dataclass
class FetchProgress:
    """Running counts of one fetch loop."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def bytes_per_s(self) -> float:
        """Image bytes accepted per second since the start."""
        return self.bytes / max(1e-9, time.monotonic() - self.started)

    def line(self) -> str:
        """One log line: counts, volume and rate."""
        return (
            f"fetched {self.ok + self.failed:,}: ok {self.ok:,}, failed {self.failed:,}, "
            f"{self.bytes / 1e6:,.1f} MB, {self.bytes_per_s / 1e6:,.2f} MB/s"
        )


def fetch_arrow(
    batches: Iterable[pa.RecordBatch],
    options: FetchOptions,
    rows_per_batch: int = 256,
    progress: Callable[[FetchProgress], None] | None = None,
    progress_interval_s: float = 30.0,
) -> Iterator[pa.RecordBatch]:
    """Fetch the ``url`` of each input row (with its ``url_id``); yield batches of :data:`ARROW_SCHEMA`.

    The rows hold each URL and error text without userinfo or secret parameters (:func:`udfs.urls.redact_url`).

    Output batches hold at most ``rows_per_batch`` rows or about 64 MB of content, in completion order.
    ``progress`` is called every ``progress_interval_s`` seconds and once at the end.
    """

    # Read in this thread (the input stream of a Spark task belongs to it); URLs are small.
    items: list[tuple[str, str]] = []
    for batch in batches:
        items += zip(batch.column("url_id").to_pylist(), batch.column("url").to_pylist(), strict=True)

    state = FetchProgress()
    last_report = time.monotonic()
    rows: list[dict[str, Any]] = []
    size = 0
    for url_id, r in iter_fetch(items, options):
        if r.status == OK:
            state.ok += 1
            state.bytes += r.n_bytes or 0
        else:
            state.failed += 1
        row = {"url_id": url_id, **r.__dict__}
        if isinstance(r.url, str):
            row["url"] = redact_url(r.url, options.redact_query_params)[0]
        if r.error:
            row["error"] = redact_text(r.error, options.redact_query_params)
        rows.append(row)
        size += len(r.content or b"")
        if len(rows) >= rows_per_batch or size >= 64_000_000:
            yield pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA)
            rows, size = [], 0
        if progress is not None and time.monotonic() - last_report >= progress_interval_s:
            progress(state)
            last_report = time.monotonic()
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA)
    if progress is not None:
        progress(state)
