"""MetaCLIP keep probabilities, entry thresholds and head shares on hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.concepts import entry_thresholds, head_share, keep_probability


def test_keep_probability_by_hand() -> None:
    # Entries of 10 and 20 pairs at t = 5: each keeps 1/2 and 1/4; the pair is lost only if both drop it.
    assert keep_probability([10, 20], 5) == pytest.approx(1 - 0.5 * 0.75)
    assert keep_probability([4], 8) == 1.0  # an entry under t keeps every pair
    assert keep_probability([100], 20) == pytest.approx(0.2)
    assert keep_probability([], 5) == 0.0
    with pytest.raises(ValueError, match="positive"):
        keep_probability([0, 3], 1)


def test_thresholds_invert_the_keep_probability() -> None:
    # One entry: t* = u * count. Two: p(5) = 0.625 for counts 10 and 20, so u = 0.625 enters at t = 5.
    t = entry_thresholds([[100], [10, 20], [10, 20], [3, 1000]], [0.3, 0.625, 0.25, 0.999])
    assert t[0] == pytest.approx(30.0)
    assert t[1] == pytest.approx(5.0, rel=1e-9)
    # p(t) = 1 - (1 - t/10)(1 - t/20) = 0.25  ->  t^2 - 30 t + 50 = 0  ->  t = 15 - sqrt(175)
    assert t[2] == pytest.approx(15 - np.sqrt(175), rel=1e-9)
    assert t[3] <= 3.0  # at the smallest count the pair is kept for sure
    assert keep_probability([3, 1000], t[3]) == pytest.approx(0.999, rel=1e-9)
    assert entry_thresholds([[], [5]], [0.5, 0.5]).tolist() == [np.inf, 2.5]


def test_a_fixed_t_keeps_each_pair_with_its_probability() -> None:
    rng = np.random.default_rng(0)
    u = rng.random(100_000)
    counts = [[10, 20]] * u.size
    kept = entry_thresholds(counts, u) < 5
    assert kept.mean() == pytest.approx(0.625, abs=0.005)
    # The same draws at a larger t keep a superset.
    assert not (kept & ~(entry_thresholds(counts, u) < 7)).any()


def test_head_share() -> None:
    # 100 concepts with any match: the top 1% is the single largest.
    assert head_share([100] + [1] * 99 + [0, 0]) == pytest.approx(100 / 199)
    assert head_share([5] * 300) == pytest.approx(3 / 300)  # flat: the top 1% (3 concepts) holds 1%
    assert head_share([]) == 0.0
    with pytest.raises(ValueError, match="draws"):
        entry_thresholds([[1]], [0.5, 0.5])
