"""What the fetcher reads from HTTP response headers: Retry-After and X-Robots-Tag."""

from __future__ import annotations

from datetime import datetime, timezone

from udfs.http_policy import opted_out, parse_retry_after


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert (
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", datetime(2015, 10, 21, 7, 27, 30, tzinfo=timezone.utc))
        == 30.0
    )
    assert parse_retry_after("soon") is None


def test_opted_out() -> None:
    assert opted_out(["noindex, NoAI"], "realsyn", ["noai"]) is True
    assert opted_out(["googlebot: noai"], "realsyn", ["noai"]) is False
    assert opted_out(["realsyn: noai"], "realsyn", ["noai"]) is True
    assert opted_out(["noindex"], "realsyn", ["noai", "noimageai"]) is False
