"""Quota kernels of balance sampling on sizes where the right answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.balance import (
    capped,
    grouped_water_fill,
    hierarchical_quotas,
    max_over_median,
    water_fill,
    water_fill_cap,
)


def test_cap_keeps_at_most_cap_per_cluster() -> None:
    assert capped([5, 1, 20, 0], 3).tolist() == [3, 1, 3, 0]
    assert capped([5, 1], 0).tolist() == [0, 0]
    with pytest.raises(ValueError, match="cap"):
        capped([1], -1)


def test_water_fill_cap_is_the_largest_cap_that_fits() -> None:
    sizes = [10, 4, 1, 7]
    # c=3: 3+3+1+3 = 10; c=4: 4+4+1+4 = 13; c=5: 5+4+1+5 = 15.
    assert water_fill_cap(sizes, 10) == 3
    assert water_fill_cap(sizes, 12) == 3
    assert water_fill_cap(sizes, 13) == 4
    assert water_fill_cap(sizes, 0) == 0
    assert water_fill_cap(sizes, 22) == 10  # the total: everything fits
    assert water_fill_cap(sizes, 1000) == 10
    assert water_fill_cap([], 5) == 0


def test_water_fill_hands_the_remainder_to_clusters_above_the_cap() -> None:
    sizes = np.array([10, 4, 1, 7])
    quota = water_fill(sizes, 12, seed=0)
    # Cap 3 gives 10; the 2 missing rows go to two of the three clusters with more than 3 members.
    assert quota.sum() == 12
    assert quota[2] == 1
    assert sorted(quota[[0, 1, 3]].tolist()) == [3, 4, 4]
    assert (quota <= sizes).all()
    assert water_fill(sizes, 100, seed=0).tolist() == sizes.tolist()
    assert water_fill(sizes, 13, seed=5).tolist() == [4, 4, 1, 4]


def test_water_fill_is_seeded() -> None:
    sizes = np.full(50, 10)
    picks = {tuple(water_fill(sizes, 125, seed=s).tolist()) for s in range(6)}
    assert len(picks) > 1  # the remainder lands on different clusters for different seeds
    assert water_fill(sizes, 125, seed=3).tolist() == water_fill(sizes, 125, seed=3).tolist()
    assert all(sum(p) == 125 and set(p) <= {2, 3} for p in picks)


def test_grouped_water_fill_fills_each_group_to_its_own_target() -> None:
    sizes = [5, 5, 1, 8, 2]
    groups = [0, 0, 0, 1, 1]
    quota = grouped_water_fill(sizes, groups, [6, 3], seed=0)
    # group 0 -> cap 2 gives 2+2+1 = 5, one more to one of the two 5s; group 1 -> cap 1 gives 1+1, one more to
    # either (both have more than 1 member).
    assert quota[2] == 1 and sorted(quota[:2].tolist()) == [2, 3]
    assert sorted(quota[3:].tolist()) == [1, 2]
    # A target above the group's total keeps the group.
    assert grouped_water_fill(sizes, groups, [100, 0], seed=0).tolist() == [5, 5, 1, 0, 0]


def test_hierarchical_quotas_split_top_down() -> None:
    # Two coarse clusters: 0 holds leaves of 90 and 10 rows, 1 holds three leaves of 5.
    leaf_sizes = [90, 10, 5, 5, 5]
    parents = [[0, 0, 1, 1, 1]]
    quota = hierarchical_quotas(leaf_sizes, parents, 30, seed=0)
    # Top level: sizes 100 and 15, target 30 -> 15 each; coarse 0 then splits 15 over (90, 10) as 8 + 7 or 7 + 8
    # of water-filling cap 7 plus one; coarse 1 keeps its 15.
    assert quota.sum() == 30
    assert quota[2:].tolist() == [5, 5, 5]
    assert sorted(quota[:2].tolist()) == [7, 8]
    flat = water_fill(leaf_sizes, 30, seed=0)
    assert sorted(flat.tolist()) == [5, 5, 5, 7, 8]  # same numbers here: cap 7 + one at the leaves too
    # Without parents it is the leaf-level water-fill.
    assert hierarchical_quotas(leaf_sizes, [], 30, seed=0).tolist() == flat.tolist()


def test_hierarchical_quotas_differ_from_flat_when_the_top_level_is_skewed() -> None:
    # Coarse 0 has 10 leaves of 10; coarse 1 has 1 leaf of 10. Target 20.
    leaf_sizes = [10] * 11
    parents = [[0] * 10 + [1]]
    quota = hierarchical_quotas(leaf_sizes, parents, 20, seed=1)
    assert quota[10] == 10  # coarse 1 gets half of the target, all in its one leaf
    assert quota[:10].sum() == 10 and set(quota[:10].tolist()) == {1}
    flat = water_fill(leaf_sizes, 20, seed=1)
    assert flat[10] <= 2  # flat: every leaf near 20 / 11


def test_three_level_tree() -> None:
    # root clusters 0, 1; middle clusters 0, 1 (under root 0), 2 (under root 1); leaves under the middle ones.
    leaf_sizes = [4, 4, 4, 100]
    parents = [[0, 0, 1], [0, 1, 2, 2]]
    quota = hierarchical_quotas(leaf_sizes, parents, 16, seed=0)
    # roots: sizes 8 and 104 -> 8 each; root 0's middles (4, 4) -> 4 each; middle 2 (4, 100) -> 4 + 4.
    assert quota.tolist() == [4, 4, 4, 4]


def test_max_over_median() -> None:
    assert max_over_median([1, 2, 3, 0, 10]) == pytest.approx(10 / 2.5)
    assert max_over_median([0, 0]) == 0.0
    assert max_over_median([4, 4]) == 1.0
