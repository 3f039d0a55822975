"""Quotas of semantic balance sampling: how many members each cluster keeps (pure numpy, no Spark).

RealSyn (arXiv 2502.12513) keeps at most ``cap`` random images per image cluster. A target size N instead of a
cap is turned into a cap by water-filling: the largest cap c with ``sum(min(c, size_i)) <= N``, and the N minus
that many rows still missing go one each to clusters that have more than c members, chosen at random with a
seed. Vo et al. 2024 (facebookresearch/ssl-data-curation) apply the same balanced split top-down over the levels
of a hierarchical k-means: the target is split over the top-level clusters by their sizes (number of rows under
them), then every cluster's share over its children, down to the leaves.

Every function here is deterministic given its inputs and seed. Sizes are per cluster, in cluster-id order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_sizes(sizes: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(sizes, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"cluster sizes must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("cluster sizes must not be negative")
    return arr


def capped(sizes: np.ndarray | Sequence[int], cap: int) -> np.ndarray:
    """Quota per cluster under a fixed cap: ``min(cap, size)``."""
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    return np.minimum(_as_sizes(sizes), cap)


def water_fill_cap(sizes: np.ndarray | Sequence[int], target: int) -> int:
    """The largest cap c with ``sum(min(c, size_i)) <= target`` (binary search; the sum grows with c).

    A target at or above the total gives the largest size (every row kept).
    """
    arr = _as_sizes(sizes)
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    if arr.size == 0:
        return 0
    lo, hi = 0, int(arr.max())  # sum(min(0, s)) = 0 <= target always holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(arr, mid).sum()) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def grouped_water_fill(
    sizes: np.ndarray | Sequence[int],
    groups: np.ndarray | Sequence[int],
    targets: np.ndarray | Sequence[int],
    seed: int,
) -> np.ndarray:
    """Water-fill the clusters of every group to that group's target, all groups at once.

    ``groups[i]`` is the group (parent) of cluster i and ``targets[g]`` the rows group g must keep. Within each
    group the quota is ``min(c_g, size)`` for the group's water-filling cap c_g, plus one for ``r_g`` of the
    clusters larger than c_g (chosen at random with ``seed``), where r_g is what the cap leaves missing. A target
    above the group's total keeps the whole group. Returns the quota of every cluster.
    """
    arr = _as_sizes(sizes)
    grp = np.asarray(groups, dtype=np.int64)
    tgt = np.asarray(targets, dtype=np.int64)
    if grp.shape != arr.shape:
        raise ValueError(f"groups has shape {grp.shape}, sizes {arr.shape}")
    if tgt.size and tgt.min() < 0:
        raise ValueError("targets must not be negative")
    if arr.size == 0:
        return arr.copy()
    if grp.min() < 0 or grp.max() >= tgt.size:
        raise ValueError(f"group ids must lie in [0, {tgt.size})")
    n_groups = tgt.size
    totals = np.bincount(grp, weights=arr, minlength=n_groups).astype(np.int64)
    goal = np.minimum(tgt, totals)
    # Binary search of every group's cap at once: lo holds (sum <= goal), hi + 1 does not.
    lo = np.zeros(n_groups, np.int64)
    hi = np.zeros(n_groups, np.int64)
    np.maximum.at(hi, grp, arr)
    while True:
        open_ = lo < hi
        if not open_.any():
            break
        mid = np.where(open_, (lo + hi + 1) // 2, lo)
        filled = np.bincount(grp, weights=np.minimum(arr, mid[grp]), minlength=n_groups).astype(np.int64)
        fits = filled <= goal
        lo = np.where(open_ & fits, mid, lo)
        hi = np.where(open_ & ~fits, mid - 1, hi)
    cap = lo
    quota = np.minimum(arr, cap[grp])
    missing = goal - np.bincount(grp, weights=quota, minlength=n_groups).astype(np.int64)
    if missing.any():
        # Clusters with room above the cap; each group hands one extra row to `missing` of them at random.
        # missing < (clusters of the group above the cap), else cap + 1 would still fit.
        room = np.flatnonzero(arr > cap[grp])
        keys = np.random.default_rng(seed).random(room.size)
        order = room[np.lexsort((keys, grp[room]))]
        group_of = grp[order]
        starts = np.searchsorted(group_of, np.arange(n_groups))
        position = np.arange(order.size) - starts[group_of]
        quota[order[position < missing[group_of]]] += 1
    return quota


def water_fill(sizes: np.ndarray | Sequence[int], target: int, seed: int) -> np.ndarray:
    """Quota per cluster that keeps ``min(target, total)`` rows as evenly as possible (see module doc)."""
    arr = _as_sizes(sizes)
    return grouped_water_fill(arr, np.zeros(arr.size, np.int64), np.array([target], np.int64), seed)


def hierarchical_quotas(
    leaf_sizes: np.ndarray | Sequence[int],
    parents: Sequence[np.ndarray | Sequence[int]],
    target: int,
    seed: int,
) -> np.ndarray:
    """Top-down balanced quotas over a tree (Vo et al. 2024): ``target`` split level by level down to the leaves.

    ``parents`` lists the tree from the top: ``parents[0][j]`` is the top-level cluster of the level-1 cluster j,
    ..., ``parents[-1][i]`` the parent of leaf i. With no parents this is :func:`water_fill` over the leaves.
    The size of a cluster is the number of rows under it. Each level is seeded from ``seed`` and its depth.
    Returns the quota of every leaf; they sum to ``min(target, total)``.
    """
    sizes = _as_sizes(leaf_sizes)
    maps = [np.asarray(p, dtype=np.int64) for p in parents]
    if maps and maps[-1].shape != sizes.shape:
        raise ValueError(f"the last parent map has {maps[-1].size} entries for {sizes.size} leaves")
    # Sizes of every level, from the leaves up.
    level_sizes = [sizes]
    for depth in range(len(maps) - 1, -1, -1):
        n_parents = int(maps[depth - 1].size) if depth > 0 else (int(maps[0].max()) + 1 if maps[0].size else 0)
        up = np.bincount(maps[depth], weights=level_sizes[0], minlength=n_parents).astype(np.int64)
        level_sizes.insert(0, up)
    quota = water_fill(level_sizes[0], target, seed)
    for depth, parent in enumerate(maps, start=1):
        quota = grouped_water_fill(level_sizes[depth], parent, quota, seed + depth)
    return quota


def max_over_median(sizes: np.ndarray | Sequence[int]) -> float:
    """Largest non-empty cluster over the median non-empty cluster (1 = flat); 0 when every cluster is empty."""
    arr = _as_sizes(sizes)
    arr = arr[arr > 0]
    if arr.size == 0:
        return 0.0
    return float(arr.max() / np.median(arr))
