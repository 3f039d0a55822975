"""The similarity band: inclusive bounds, one reason per side."""

from __future__ import annotations

import math

import pytest

from udfs.similarity import REASON_NO_TEXT_EMBEDDING, REASON_TOO_DISSIMILAR, REASON_TOO_SIMILAR, band_reason

LOW, HIGH = 0.51, 0.61
EPS = 1e-6


@pytest.mark.parametrize(
    ("cosine", "reason"),
    [
        (LOW, None),
        (HIGH, None),
        (0.56, None),
        (LOW + EPS, None),
        (HIGH - EPS, None),
        (LOW - EPS, REASON_TOO_DISSIMILAR),
        (HIGH + EPS, REASON_TOO_SIMILAR),
        (-1.0, REASON_TOO_DISSIMILAR),
        (1.0, REASON_TOO_SIMILAR),
        (None, REASON_NO_TEXT_EMBEDDING),
        (math.nan, REASON_NO_TEXT_EMBEDDING),
    ],
)
def test_band_at_and_beside_its_edges(cosine: float | None, reason: str | None) -> None:
    assert band_reason(cosine, LOW, HIGH) == reason
