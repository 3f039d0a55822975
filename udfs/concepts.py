"""Concept-balanced sampling kernels (pure numpy, no Spark): MetaCLIP's entry balancing and head shares.

MetaCLIP (Xu et al., ICLR 2024) balances pairs over metadata *entries* matched in their texts: an entry with
``count_e`` matching pairs keeps each of them with probability ``min(1, t / count_e)``, and a pair survives if any
of its entries keeps it, so its keep probability is ``p(t) = 1 - prod_e (1 - min(1, t / count_e))``.

Drawing one uniform ``u`` per pair and keeping it when ``u < p(t)`` gives the same sample at every ``t`` for one
seed, and as ``p`` grows with ``t`` the pair enters at the threshold ``t*`` where ``p(t*) = u``: a pair is in the
sample of ``t`` exactly when ``t* < t``. :func:`entry_thresholds` computes ``t*`` for every pair, so a fixed ``t``
is a filter and a target size is the target smallest thresholds (the ``t`` that a binary search over ``p`` would
find, without searching).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Bisection steps of entry_thresholds: the bracket [0, min count] shrinks 2^-60-fold, below float64 resolution.
_BISECTION_STEPS = 60


def keep_probability(counts: Sequence[int] | np.ndarray, t: float) -> float:
    """MetaCLIP's keep probability of a pair whose entries have ``counts`` matches: 1 - prod(1 - min(1, t/c))."""
    c = np.asarray(counts, dtype=np.float64)
    if c.size == 0:
        return 0.0
    if c.min() <= 0:
        raise ValueError("entry counts must be positive")
    return float(1.0 - np.prod(1.0 - np.minimum(1.0, t / c)))


def entry_thresholds(counts: Sequence[np.ndarray | Sequence[int]], u: np.ndarray | Sequence[float]) -> np.ndarray:
    """The ``t*`` of every pair: the smallest t at which its keep probability reaches its uniform draw ``u``.

    ``counts[i]`` are the match counts of pair i's entries (each > 0) and ``u[i]`` in (0, 1). A pair with one entry
    has ``t* = u * count``; with several, t* is found by bisection on [0, min count] (at ``t = min count`` the pair
    is kept for sure), all pairs at once. A pair with no entry never enters: ``t* = inf``.
    """
    draws = np.asarray(u, dtype=np.float64)
    if draws.ndim != 1 or len(counts) != draws.size:
        raise ValueError(f"{len(counts)} count lists for {draws.size} draws")
    lengths = np.fromiter((len(c) for c in counts), dtype=np.int64, count=len(counts))
    out = np.full(draws.size, np.inf)
    matched = np.flatnonzero(lengths > 0)
    if matched.size == 0:
        return out
    flat = np.concatenate([np.asarray(counts[int(i)], dtype=np.float64) for i in matched])
    if flat.min() <= 0:
        raise ValueError("entry counts must be positive")
    n = lengths[matched]
    starts = np.concatenate(([0], np.cumsum(n)[:-1]))
    owner = np.repeat(np.arange(matched.size), n)
    target = np.log1p(-draws[matched])  # kept when log(prod(1 - min(1, t/c))) < log(1 - u)
    smallest = np.minimum.reduceat(flat, starts)
    lo, hi = np.zeros(matched.size), smallest.copy()
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        with np.errstate(divide="ignore"):
            log_miss = np.log1p(-np.minimum(1.0, mid[owner] / flat))
        kept = np.add.reduceat(log_miss, starts) < target
        hi = np.where(kept, mid, hi)
        lo = np.where(kept, lo, mid)
    out[matched] = np.where(n == 1, draws[matched] * smallest, hi)
    return out


def head_share(counts: np.ndarray | Sequence[int], fraction: float = 0.01) -> float:
    """Share of all matches that fall in the most frequent ``fraction`` of the concepts with any (at least one).

    A flat distribution over many concepts gives about ``fraction``; a Zipf head gives much more. 0 when empty.
    """
    arr = np.asarray(counts, dtype=np.int64)
    arr = np.sort(arr[arr > 0])[::-1]
    if arr.size == 0:
        return 0.0
    head = max(1, int(np.ceil(fraction * arr.size)))
    return float(arr[:head].sum() / arr.sum())
