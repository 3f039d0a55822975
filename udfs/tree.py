"""The two-level k-means tree and the search over it: descent to the best leaves, probing by a calibrated margin,
prefiltered exact scoring.

Plain numpy kernels, no Spark; the same tie rule as udfs/vectors.py (the lower index wins). The clustering
stage trains the tree (udfs/kmeans.py), ships it to its tasks and assigns every embedding to a leaf; retrieval
descends it for each image and scores the sentences of the leaves it probes.

Given a torch ``device`` ("cuda:0"), :func:`descend` and :func:`top_k_prefiltered` compute their products and
rankings there and return the same numpy arrays; the tree is copied to the device once per Python process
(:func:`tree_on`). Float32 products on a GPU round differently from the host's, so two candidates whose scores
agree to about 1e-6 may change places; otherwise the results are the host's, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from udfs.vectors import Ints, Matrix, to_device, top_columns, top_columns_on, top_k_exact, top_p


@dataclass(frozen=True)
class Tree:
    """A two-level spherical k-means tree.

    ``coarse`` (K1, d) are the top centroids; ``leaves`` (L, d) the fine centroids, stored grouped by parent so
    that the leaves of coarse cluster ``c`` are rows ``offsets[c]:offsets[c + 1]``; ``parent[i]`` is the coarse
    cluster of leaf ``i``.
    """

    coarse: Matrix
    leaves: Matrix
    parent: Ints

    @property
    def offsets(self) -> Ints:
        """Row range of each coarse cluster's leaves in ``leaves`` (length K1 + 1)."""
        return np.searchsorted(self.parent, np.arange(self.coarse.shape[0] + 1), side="left").astype(np.int64)

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return int(self.leaves.shape[0])

    @staticmethod
    def from_parts(coarse: Matrix, fine: Sequence[Matrix]) -> Tree:
        """Build a tree from the coarse centroids and, per coarse cluster in order, its fine centroids."""
        if len(fine) != coarse.shape[0]:
            raise ValueError(f"{coarse.shape[0]} coarse centroids but {len(fine)} sets of fine centroids")
        d = coarse.shape[1]
        leaves = np.concatenate([f.reshape(-1, d) for f in fine]) if fine else np.zeros((0, d), np.float32)
        parent = np.repeat(np.arange(len(fine), dtype=np.int64), [f.shape[0] for f in fine])
        return Tree(np.ascontiguousarray(coarse, np.float32), np.ascontiguousarray(leaves, np.float32), parent)


def descend(
    x: Matrix, tree: Tree, p: int, coarse_probe: int, max_cells: int | None = None, device: str | None = None
) -> tuple[Ints, Matrix, Ints]:
    """The ``p`` nearest leaves of each row, found by descending ``tree``: (leaf ids, scores, dot products).

    Each row is compared with every coarse centroid, then with the leaves of its ``coarse_probe`` nearest coarse
    clusters only; the best ``p`` of those leaves are returned, best first, padded with -1 (score -inf) when
    fewer leaves were seen; equal scores go to the lower leaf id. The third array counts the similarity
    computations spent per row. Rows are processed in chunks whose candidate score matrix holds at most
    ``max_cells`` floats (default 2^24 on the host, 2^27 on a ``device``, where bigger chunks mean fewer launches).
    """
    n = x.shape[0]
    leaf_ids = np.full((n, p), -1, dtype=np.int64)
    leaf_scores = np.full((n, p), -np.inf, dtype=np.float32)
    cost = np.zeros(n, dtype=np.int64)
    if n == 0 or tree.n_leaves == 0 or p <= 0:
        return leaf_ids, leaf_scores, cost
    offsets = tree.offsets
    sizes = np.diff(offsets)
    fan = int(sizes.max())
    probe = min(coarse_probe, tree.coarse.shape[0])
    width = min(p, probe * fan)
    chunk = max(1, (max_cells or (1 << 24 if device is None else 1 << 27)) // (probe * fan))
    if device is not None:
        _descend_on(x, tree, offsets, fan, probe, width, chunk, device, (leaf_ids, leaf_scores, cost))
        return leaf_ids, leaf_scores, cost
    for start in range(0, n, chunk):
        xc = x[start : start + chunk]
        m = xc.shape[0]
        # Slots in coarse-id order, so candidate columns run in leaf-id order and ties go to the lower leaf id.
        probed = np.sort(top_p(xc, tree.coarse, probe)[0], axis=1)
        cost[start : start + m] = tree.coarse.shape[0] + sizes[probed].sum(axis=1)
        scores = np.full((m, probe * fan), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(m, dtype=np.int64), probe)
        slots = np.tile(np.arange(probe, dtype=np.int64), m)
        cs = probed.ravel()
        order = np.argsort(cs, kind="stable")
        rows, slots, cs = rows[order], slots[order], cs[order]
        bounds = np.flatnonzero(np.diff(cs)) + 1
        for seg_rows, seg_slots, seg_c in zip(
            np.split(rows, bounds), np.split(slots, bounds), np.split(cs, bounds), strict=True
        ):
            a, b = int(offsets[seg_c[0]]), int(offsets[seg_c[0] + 1])
            if b > a:
                cols = seg_slots[:, None] * fan + np.arange(b - a)[None, :]
                scores[seg_rows[:, None], cols] = xc[seg_rows] @ tree.leaves[a:b].T
        best = top_columns(scores, width)
        best_scores = np.take_along_axis(scores, best, axis=1)
        leaves = offsets[np.take_along_axis(probed, best // fan, axis=1)] + best % fan
        seen = np.isfinite(best_scores)
        leaf_ids[start : start + m, :width] = np.where(seen, leaves, -1)
        leaf_scores[start : start + m, :width] = best_scores
    return leaf_ids, leaf_scores, cost


_TREES_ON: dict[tuple[int, str], tuple[Tree, Any, Any]] = {}


def tree_on(tree: Tree, device: str) -> tuple[Any, Any]:
    """``tree``'s coarse and leaf centroids as torch matrices on ``device``, copied once per Python process and
    tree: a memory-mapped tree (realsyn.tree.shipped) is one object for all tasks of a worker, so its
    leaves cross to the GPU once; a small tree that travels in each task's closure is copied again per task.
    The leaves are copied in slices, so a memory-mapped matrix is never read into host memory whole. A worker
    runs one task at a time: copies on another device (an earlier task's GPU) are dropped, so that no GPU holds
    the tree of a worker that now runs elsewhere (at the paper's size a tree is 6 GB)."""
    import torch

    key = (id(tree), device)
    hit = _TREES_ON.get(key)
    if hit is None or hit[0] is not tree:
        for other in [k for k in _TREES_ON if k[1] != device]:
            del _TREES_ON[other]
        coarse = to_device(tree.coarse, device)
        leaves = torch.empty(tree.leaves.shape, dtype=torch.float32, device=device)
        for start in range(0, tree.n_leaves, 1 << 16):
            leaves[start : start + (1 << 16)] = torch.from_numpy(np.array(tree.leaves[start : start + (1 << 16)]))
        hit = _TREES_ON[key] = (tree, coarse, leaves)  # holding the tree keeps its id from being reused
        while len(_TREES_ON) > 2:  # refinement ships a new tree per step; older ones are not used again
            del _TREES_ON[next(iter(_TREES_ON))]
    return hit[1], hit[2]


def _descend_on(
    x: Matrix,
    tree: Tree,
    offsets: Ints,
    fan: int,
    probe: int,
    width: int,
    chunk: int,
    device: str,
    out: tuple[Ints, Matrix, Ints],
) -> None:
    """:func:`descend`'s chunk loop with its products and rankings on a torch ``device``, filling ``out`` (leaf
    ids, scores, costs): the same steps, one launch per probed coarse cluster and chunk."""
    import torch

    leaf_ids, leaf_scores, cost = out
    coarse, leaves = tree_on(tree, device)
    k1 = tree.coarse.shape[0]
    offsets_on = torch.from_numpy(offsets).to(device)
    sizes_on = offsets_on[1:] - offsets_on[:-1]
    rows_on = to_device(x, device)
    for start in range(0, x.shape[0], chunk):
        xc = rows_on[start : start + chunk]
        m = xc.shape[0]
        probed = torch.sort(top_columns_on(xc @ coarse.T, probe), dim=1).values  # coarse-id order, as on the host
        cost[start : start + m] = k1 + sizes_on[probed].sum(dim=1).cpu().numpy()
        scores = torch.full((m, probe * fan), -torch.inf, dtype=torch.float32, device=device)
        flat = probed.reshape(-1)
        order = torch.argsort(flat, stable=True)
        rows, slots = order // probe, order % probe
        first = 0
        for c, count in enumerate(torch.bincount(flat, minlength=k1).cpu().tolist()):
            a, b = int(offsets[c]), int(offsets[c + 1])
            seg = slice(first, first + count)
            first += count
            if count and b > a:
                r = rows[seg]
                cols = slots[seg, None] * fan + torch.arange(b - a, device=device)[None, :]
                scores[r[:, None], cols] = xc[r] @ leaves[a:b].T
        best = top_columns_on(scores, width)
        best_scores = scores.gather(1, best)
        found = offsets_on[probed.gather(1, best // fan)] + best % fan
        leaf_ids[start : start + m, :width] = torch.where(torch.isfinite(best_scores), found, -1).cpu().numpy()
        leaf_scores[start : start + m, :width] = best_scores.cpu().numpy()


def best_per_probe(x: Matrix, tree: Tree, coarse_probe: int) -> tuple[Ints, Ints, Matrix]:
    """For every row and each of its ``coarse_probe`` nearest coarse clusters, the best leaf there.

    Returns (coarse ids, leaf ids, scores), each (n, P), P = min(coarse_probe, K1), slots in ascending coarse id;
    a coarse cluster without leaves gives leaf -1 and score -inf. One matrix product per coarse cluster over the
    rows that probe it, so the cost is that of the similarities alone.
    """
    n = x.shape[0]
    probe = min(coarse_probe, tree.coarse.shape[0])
    coarse_ids = np.sort(top_p(x, tree.coarse, probe)[0], axis=1)
    leaf_ids = np.full((n, probe), -1, dtype=np.int64)
    scores = np.full((n, probe), -np.inf, dtype=np.float32)
    if n == 0 or probe == 0:
        return coarse_ids, leaf_ids, scores
    offsets = tree.offsets
    flat = coarse_ids.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.flatnonzero(np.diff(flat[order])) + 1
    for cells in np.split(order, bounds):
        c = int(flat[cells[0]])
        a, b = int(offsets[c]), int(offsets[c + 1])
        if b == a:
            continue
        sims = x[cells // probe] @ tree.leaves[a:b].T
        best = np.argmax(sims, axis=1)
        leaf_ids.ravel()[cells] = a + best
        scores.ravel()[cells] = sims[np.arange(cells.size), best]
    return coarse_ids, leaf_ids, scores


def nearest_leaf(x: Matrix, tree: Tree, coarse_probe: int) -> tuple[Ints, Matrix]:
    """The nearest leaf of every row under its ``coarse_probe`` nearest coarse clusters: (leaf ids, scores).

    The same leaf as ``descend(x, tree, 1, coarse_probe)`` (ties to the lower leaf id; -1 when no probed
    cluster has leaves), without ranking the candidates.
    """
    _, leaf_ids, scores = best_per_probe(x, tree, coarse_probe)
    if leaf_ids.shape[1] == 0:
        return np.full(x.shape[0], -1, dtype=np.int64), np.full(x.shape[0], -np.inf, dtype=np.float32)
    slot = np.argmax(scores, axis=1)  # slots run in coarse-id order, so equal scores go to the lower leaf id
    rows = np.arange(x.shape[0])
    return leaf_ids[rows, slot], scores[rows, slot]


def boundary_rows(x: Matrix, tree: Tree, coarse_probe: int, margin: float) -> tuple[Ints, Ints, Matrix]:
    """Which coarse clusters each row takes part in during a boundary pass, and what it scores elsewhere.

    A row goes to every one of its ``coarse_probe`` nearest coarse clusters whose best leaf is within
    ``margin`` of the row's best leaf overall (its own cluster, and those across a near boundary). Returns flat
    arrays (row index, coarse id, competitor): the competitor is the row's best score in the other probed
    clusters (-inf when there is none), which a leaf of the coarse cluster must beat to claim the row.
    """
    coarse_ids, _, scores = best_per_probe(x, tree, coarse_probe)
    n, probe = scores.shape
    if n == 0 or probe == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    top2 = -np.sort(-scores, axis=1)[:, :2] if probe > 1 else np.c_[scores, np.full(n, -np.inf, np.float32)]
    best, second = top2[:, 0], top2[:, 1]
    # the slot holding the best score competes with the second best; every other slot with the best
    competitor = np.repeat(best[:, None], probe, axis=1)
    competitor[np.arange(n), np.argmax(scores, axis=1)] = second
    keep = np.isfinite(scores) & (scores >= best[:, None] - np.float32(margin))
    rows, slots = np.nonzero(keep)
    return rows.astype(np.int64), coarse_ids[rows, slots], competitor[rows, slots].astype(np.float32)


def probe_counts(scores: Matrix, margin: float, lo: int, hi: int) -> Ints:
    """How many of its ranked leaves each row probes, given ``descend``'s scores (best first, -inf padded): those
    whose centroid similarity lies within ``margin`` of the row's best, but at least ``lo`` and at most ``hi``
    (and never more than were found). An image near one leaf's centre probes few leaves, one between many
    probes more."""
    found = np.isfinite(scores).sum(axis=1)
    if scores.shape[1] == 0:
        return found.astype(np.int64)
    near = (scores >= scores[:, :1] - np.float32(margin)).sum(axis=1)
    return np.minimum(np.clip(near, lo, hi), found).astype(np.int64)


def calibrate_margin(scores: Matrix, mean_p: float, lo: int, hi: int, steps: int = 40) -> float:
    """The largest margin for which rows probe at most ``mean_p`` leaves on average (``probe_counts``), found by
    bisection on ``scores`` (a sample of ``descend``'s scores). Similarities differ by model, modality and
    corpus size, so the margin is set from the data for a given average cost rather than configured. With
    ``lo`` = ``hi`` every row probes the same number whatever the margin: 0."""
    if lo >= hi or scores.shape[0] == 0 or probe_counts(scores, 0.0, lo, hi).mean() > mean_p:
        return 0.0
    finite = scores[np.isfinite(scores)]
    top = float(finite.max() - finite.min()) if finite.size else 0.0
    if probe_counts(scores, top, lo, hi).mean() <= mean_p:
        return top
    low, high = 0.0, top
    for _ in range(steps):
        mid = (low + high) / 2
        if probe_counts(scores, mid, lo, hi).mean() <= mean_p:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class Prefilter:
    """Cheap pre-scoring for retrieval: keys are first scored in the top ``basis.shape[1]`` principal axes of
    the tree's leaf centroids, and only each query's ``shortlist`` best keys are scored exactly.

    A score in r of d dimensions costs r/d of a dot product, so a leaf of n keys costs n r / d + shortlist dot
    products instead of n: at the same cost an image can probe several times as many leaves. The axes come from
    the centroids (no extra pass over the data; a little below the data's own axes in tests on real text
    embeddings), and the exact rescoring means every returned score is an exact cosine.
    """

    mean: npt.NDArray[np.float32]
    basis: Matrix  # (d, r)
    shortlist: int

    @staticmethod
    def of(tree: Tree, dim: int, shortlist: int) -> Prefilter | None:
        """The prefilter of ``tree`` in ``dim`` axes, or None when ``dim`` is 0, at least the full dimension, or
        the tree has fewer than two leaves (then retrieval scores exactly)."""
        d = int(tree.leaves.shape[1])
        if dim <= 0 or dim >= d or tree.n_leaves < 2:
            return None
        centroids = tree.leaves.astype(np.float64)
        mean = centroids.mean(axis=0)
        cov = np.zeros((d, d))
        for start in range(0, centroids.shape[0], 65_536):  # bounded memory for millions of leaves
            part = centroids[start : start + 65_536] - mean
            cov += part.T @ part
        _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
        basis = vectors[:, ::-1][:, : min(dim, tree.n_leaves)]
        return Prefilter(mean.astype(np.float32), np.ascontiguousarray(basis, np.float32), shortlist)

    @property
    def dim(self) -> int:
        """The number of axes keys are pre-scored in."""
        return int(self.basis.shape[1])

    def keys_low(self, keys: Matrix) -> Matrix:
        """Keys in the prefilter's axes, centred on the centroids' mean."""
        return np.ascontiguousarray((keys - self.mean) @ self.basis, np.float32)

    def queries_low(self, queries: Matrix) -> Matrix:
        """Queries in the prefilter's axes (not centred: q.(s - mean) orders keys as q.s does)."""
        return np.ascontiguousarray(queries @ self.basis, np.float32)

    def cost(self, n_keys: npt.ArrayLike, d: int, k: int) -> npt.NDArray[np.float64]:
        """Dot products (of full dimension ``d``) one query spends on groups of ``n_keys`` keys for its top ``k``
        in :func:`top_k_prefiltered`: all of them exactly when they fit in the shortlist."""
        n = np.asarray(n_keys, np.float64)
        return np.where(n <= max(self.shortlist, k), n, n * self.dim / d + self.shortlist)


def top_k_prefiltered(
    queries: Matrix,
    keys: Matrix,
    k: int,
    prefilter: Prefilter | None,
    queries_low: Matrix | None = None,
    keys_low: Matrix | None = None,
    rows_per_step: int = 512,
    device: str | None = None,
) -> tuple[Ints, Matrix]:
    """Top-``k`` keys of every query as :func:`top_k_exact` returns them, through ``prefilter``'s shortlist
    (exact when ``prefilter`` is None or the keys fit in the shortlist). Scores are exact; ties go to the lower
    key index among the shortlisted keys. ``queries_low`` / ``keys_low``: the inputs already projected
    (:meth:`Prefilter.queries_low`, :meth:`Prefilter.keys_low`), so that a key or query scored in many groups
    is projected once. ``device``: the products and rankings run there (a torch device), in steps of
    ``rows_per_step`` x 16 queries."""
    nq, nk = queries.shape[0], keys.shape[0]
    if device is not None:
        return _top_k_on(queries, keys, k, prefilter, queries_low, keys_low, rows_per_step * 16, device)
    if prefilter is None or nk <= max(prefilter.shortlist, k) or nq == 0:
        return top_k_exact(queries, keys, k)
    width = min(k, prefilter.shortlist)
    keys_low = prefilter.keys_low(keys) if keys_low is None else keys_low
    queries_low = prefilter.queries_low(queries) if queries_low is None else queries_low
    out_idx = np.zeros((nq, width), np.int64)
    out_scores = np.zeros((nq, width), np.float32)
    for start in range(0, nq, rows_per_step):  # keys[shortlist] holds rows x shortlist x d floats
        q = queries[start : start + rows_per_step]
        approx = (queries_low[start : start + rows_per_step] @ keys_low.T).astype(np.float32, copy=False)
        short = np.sort(top_columns(approx, prefilter.shortlist), axis=1)  # ascending: stable ties to lower key
        exact = np.einsum("qd,qld->ql", q, keys[short]).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :width]
        out_idx[start : start + q.shape[0]] = np.take_along_axis(short, order, axis=1)
        out_scores[start : start + q.shape[0]] = np.take_along_axis(exact, order, axis=1)
    return out_idx, out_scores


def _top_k_on(
    queries: Matrix,
    keys: Matrix,
    k: int,
    prefilter: Prefilter | None,
    queries_low: Matrix | None,
    keys_low: Matrix | None,
    rows_per_step: int,
    device: str,
) -> tuple[Ints, Matrix]:
    """:func:`top_k_prefiltered` with its products and rankings on a torch ``device``."""
    import torch

    nq, nk = queries.shape[0], keys.shape[0]
    pre = None if prefilter is None or nk <= max(prefilter.shortlist, k) else prefilter  # None: exact scores
    width = min(k, nk) if pre is None else min(k, pre.shortlist)
    out_idx = np.zeros((nq, width), np.int64)
    out_scores = np.zeros((nq, width), np.float32)
    if nq == 0 or width == 0:
        return out_idx, out_scores
    q_all, keys_on = to_device(queries, device), to_device(keys, device)
    if pre is not None:
        q_low = to_device(pre.queries_low(queries) if queries_low is None else queries_low, device)
        keys_low_on = to_device(pre.keys_low(keys) if keys_low is None else keys_low, device).T
    for start in range(0, nq, rows_per_step):
        q = q_all[start : start + rows_per_step]
        if pre is None:
            sims = q @ keys_on.T
            best = top_columns_on(sims, width)
            best_scores = sims.gather(1, best)
        else:
            short = torch.sort(
                top_columns_on(q_low[start : start + rows_per_step] @ keys_low_on, pre.shortlist), dim=1
            ).values
            exact = torch.einsum("qd,qld->ql", q, keys_on[short])
            order = torch.sort(exact, dim=1, descending=True, stable=True).indices[:, :width]
            best, best_scores = short.gather(1, order), exact.gather(1, order)
        out_idx[start : start + q.shape[0]] = best.cpu().numpy()
        out_scores[start : start + q.shape[0]] = best_scores.cpu().numpy()
    return out_idx, out_scores
