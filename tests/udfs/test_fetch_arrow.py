"""The fetcher as a Spark task sees it: Arrow batches in and out, progress, counts per status."""

from __future__ import annotations

import pyarrow as pa

from tests.support.loopback import BODIES, OPTS, LoopbackServer
from udfs import fetch as F
from udfs.fetch_arrow import StatusCounts, count_statuses, fetch_arrow
from udfs.fetch_schema import ARROW_SCHEMA


def test_fetch_arrow_keeps_keys_and_schema(server: LoopbackServer) -> None:
    batch = pa.RecordBatch.from_pydict(
        {"url_id": ["a", "b", "c"], "url": [server.url("/png"), server.url("/missing"), server.url("/gif")]}
    )
    reports: list[str] = []
    out = pa.Table.from_batches(
        list(fetch_arrow([batch], OPTS, rows_per_batch=2, progress=lambda p: reports.append(p.line())))
    )
    assert out.schema == ARROW_SCHEMA
    rows = sorted(
        zip(out["url_id"].to_pylist(), out["status"].to_pylist(), out["http_status"].to_pylist(), strict=True)
    )
    assert rows == [("a", F.OK, 200), ("b", F.HTTP_ERROR, 404), ("c", F.OK, 200)]
    png, gif = len(BODIES["png"][0]), len(BODIES["gif"][0])
    assert reports[-1].startswith("fetched 3: ok 2, failed 1, ") and f"{(png + gif) / 1e6:,.1f} MB" in reports[-1]


def test_status_counts() -> None:
    rows = [
        {"url_id": "a", "url": "u1", "status": F.OK, "n_bytes": 10},
        {"url_id": "b", "url": "u2", "status": F.HTTP_ERROR, "http_status": 404},
        {"url_id": "c", "url": "u3", "status": F.OK, "n_bytes": 5},
    ]
    counts: dict[str, list[int]] = {}
    count_statuses(pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA), counts)
    assert counts == {F.OK: [2, 15], F.HTTP_ERROR: [1, 0]}
    param = StatusCounts()
    total = param.addInPlace(param.zero({}), counts)
    assert param.addInPlace(total, {F.OK: [1, 7], F.TIMEOUT: [1, 0]}) == {
        F.OK: [3, 22],
        F.HTTP_ERROR: [1, 0],
        F.TIMEOUT: [1, 0],
    }
