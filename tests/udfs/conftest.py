"""Fixtures of the udfs tests: the loopback HTTP server of the fetcher's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.loopback import LoopbackServer


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """A loopback server for the tests of one module."""
    srv = LoopbackServer()
    yield srv
    srv.stop()
