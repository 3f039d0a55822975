"""What the fetcher reads from HTTP response headers: when to retry (Retry-After) and whether a site opts out.

:func:`parse_retry_after` turns a ``Retry-After`` header (delta-seconds or an HTTP date) into seconds to wait;
:func:`opted_out` says whether ``X-Robots-Tag`` values forbid AI use (``noai`` / ``noimageai``), globally or
addressed to our user-agent token. Pure functions on header values: no Spark, no network.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def opted_out(x_robots_tags: Iterable[str], token: str, directives: Sequence[str]) -> bool:
    """Whether X-Robots-Tag values forbid use, globally or for user agent ``token`` ("realsyn: noai")."""
    wanted = {d.lower() for d in directives}
    for value in x_robots_tags:
        agent, sep, rest = value.partition(":")
        scoped = bool(sep) and agent.strip().lower() not in wanted and " " not in agent.strip()
        if scoped and agent.strip().lower() != token.lower():
            continue
        listed = rest if scoped else value
        if any(d.strip().lower() in wanted for d in listed.split(",")):
            return True
    return False
