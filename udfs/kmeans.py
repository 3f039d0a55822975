"""Spherical k-means and the training of the two-level tree: k-means++, centroid resampling, refinement from
per-leaf sums, boundary passes.

Plain numpy / faiss kernels, no Spark. Given a torch ``device`` ("cuda:0"), the similarity products and per-leaf
sums of the Lloyd steps, and the products of the k-means++ seeding, run there instead (:class:`DeviceRows`: the
rows are copied once, every step sends only the centroids), and k-means is :func:`local_refined`'s Lloyd loop on
that device rather than faiss's CPU build; labels and random draws stay on the host.

The resampling step follows the idea of Vo et al. 2024 ("Automatic Data Curation for Self-Supervised Learning",
facebookresearch/ssl-data-curation): after k-means, each centroid is moved to the mean of the ``resample_size``
points closest to it, which pulls centroids away from the dense middle of big clusters and spreads them more
evenly over the data's support.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from udfs.tree import Tree
from udfs.vectors import Ints, Matrix, assign, l2_normalize, to_device


class DeviceRows:
    """Fixed rows whose similarities with centroids (or with some of the rows) are asked for again and again.

    ``device`` None: numpy on the host (:func:`udfs.vectors.assign`). A torch device: the rows are copied there
    once, and each call computes its products there in chunks of ``chunk_rows`` rows, returning numpy arrays;
    ties still go to the lower centroid index (``torch.max`` returns the first maximal index).
    """

    def __init__(self, x: Matrix, device: str | None = None, chunk_rows: int = 16_384) -> None:
        self.x = x
        self.device = device
        self.chunk_rows = chunk_rows
        self._rows: Any = None
        if device is not None:
            self._rows = to_device(x, device)

    def nearest(self, centroids: Matrix) -> tuple[Ints, Matrix]:
        """Nearest centroid of every row (cosine): (labels (n,), scores (n,)), as :func:`udfs.vectors.assign`."""
        if self._rows is None:
            return assign(self.x, centroids, self.chunk_rows)

        n = self.x.shape[0]
        if centroids.shape[0] == 0:
            return np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.float32)
        c = to_device(centroids, self._rows.device)
        labels, scores = np.zeros(n, np.int64), np.zeros(n, np.float32)
        for start in range(0, n, self.chunk_rows):
            best = (self._rows[start : start + self.chunk_rows] @ c.T).max(dim=1)
            labels[start : start + self.chunk_rows] = best.indices.cpu().numpy()
            scores[start : start + self.chunk_rows] = best.values.cpu().numpy()
        return labels, scores

    def sums(self, labels: Ints) -> tuple[Ints, Ints, npt.NDArray[np.float64]]:
        """:func:`sums_by_label` of the rows whose label is >= 0 (the others are left out): per label, ascending,
        (labels, row counts, float64 sums of rows). On a device each chunk of rows is summed by one product with a
        one-hot matrix (float32, at the GPU's full rate) and the chunks' sums are added in float64: no atomic adds,
        so the same inputs give the same bits on the same GPU."""
        claimed = labels >= 0
        if self._rows is None:
            return sums_by_label(self.x[claimed], labels[claimed])
        import torch

        keys, inverse, counts = np.unique(labels[claimed], return_inverse=True, return_counts=True)
        d = self.x.shape[1]
        if keys.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, d), np.float64)
        slot = np.full(labels.size, -1, np.int64)
        slot[claimed] = inverse.ravel()
        on_device = torch.from_numpy(slot).to(self.device)
        totals = torch.zeros((keys.size, d), dtype=torch.float64, device=self.device)
        for start in range(0, labels.size, self.chunk_rows):
            part = on_device[start : start + self.chunk_rows]
            keep = torch.nonzero(part >= 0).squeeze(1)
            one_hot = torch.zeros((keys.size, part.numel()), dtype=torch.float32, device=self.device)
            one_hot[part[keep], keep] = 1.0
            totals += (one_hot @ self._rows[start : start + self.chunk_rows]).double()
        return keys.astype(np.int64), counts.astype(np.int64), totals.cpu().numpy()

    def dots(self, rows: Ints) -> npt.NDArray[np.float64]:
        """Similarities of the given rows with every row: shape (len(rows), n), float64."""
        if self._rows is None:
            return (self.x[rows] @ self.x.T).astype(np.float64)
        import torch

        picked = self._rows[torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)]
        return (picked @ self._rows.T).double().cpu().numpy()


def spherical_kmeans(
    x: Matrix,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    resampling_steps: int = 0,
    resample_size: int = 0,
    init: Literal["kmeans++", "random"] = "kmeans++",
    threads: int | None = None,
    device: str | None = None,
) -> Matrix:
    """Train spherical k-means with faiss and return unit-norm centroids, shape (min(k, distinct rows), d).

    ``x`` holds unit rows. faiss subsamples to ``max_points_per_centroid * k`` rows (with ``seed``), so the
    cost per call is bounded whatever ``n``. When there are no more distinct rows than ``k``, the distinct rows
    themselves are the centroids (sorted, so the result does not depend on input order). ``init`` "kmeans++"
    seeds with :func:`kmeans_plus_plus` (small clusters far from the rest get a centroid); "random" is faiss's
    own choice of k random rows. ``threads`` caps faiss's OpenMP threads (1 inside a Spark task, which
    owns one core). ``resampling_steps``
    > 0 then moves each centroid, that many times, to the normalised mean of its ``resample_size`` closest
    points (Vo et al. 2024).

    ``device`` (a torch device, e.g. "cuda:0"): the same seeding, then up to ``niter`` Lloyd steps of
    :func:`local_refined` there (on the same subsample size, drawn with ``seed``) instead of faiss; a centroid that
    ends with no row keeps its place rather than splitting a big cluster as faiss does. "random" init draws
    its k rows with ``seed``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n == 0 or k <= 0:
        return np.zeros((0, d), dtype=np.float32)
    distinct = np.unique(x, axis=0)
    if distinct.shape[0] <= k:
        return l2_normalize(distinct)
    if device is not None:
        return _device_kmeans(x, k, niter, seed, max_points_per_centroid, resampling_steps, resample_size, init, device)
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(threads)
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
        verbose=False,
    )
    seeds = kmeans_plus_plus(x, k, seed) if init == "kmeans++" else None
    if seeds is not None and seeds.shape[0] < k:  # every row is already a seed
        return l2_normalize(np.unique(seeds, axis=0))
    km.train(x, init_centroids=seeds)
    centroids = l2_normalize(np.asarray(km.centroids))
    for _ in range(resampling_steps):
        centroids = resample_centroids(x, centroids, resample_size)
    return centroids


def _device_kmeans(
    x: Matrix,
    k: int,
    niter: int,
    seed: int,
    max_points_per_centroid: int,
    resampling_steps: int,
    resample_size: int,
    init: Literal["kmeans++", "random"],
    device: str,
) -> Matrix:
    """:func:`spherical_kmeans` on a torch device (x holds more distinct rows than k)."""
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points_per_centroid * k:
        x = x[np.sort(rng.choice(x.shape[0], max_points_per_centroid * k, replace=False))]
    if init == "kmeans++":
        seeds = kmeans_plus_plus(x, k, seed, device=device)
        if seeds.shape[0] < k:  # every row is already a seed
            return l2_normalize(np.unique(seeds, axis=0))
    else:
        seeds = x[np.sort(rng.choice(x.shape[0], k, replace=False))]
    rows = DeviceRows(x, device)
    centroids, _, _ = local_refined(x, seeds, np.full(x.shape[0], -np.inf, np.float32), niter, rows=rows)
    for _ in range(resampling_steps):
        centroids = resample_centroids(x, centroids, resample_size, rows=rows)
    return l2_normalize(centroids)


def kmeans_plus_plus(x: Matrix, k: int, seed: int, max_rows: int = 65_536, device: str | None = None) -> Matrix:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; as in scikit-learn) on at most ``max_rows`` rows.

    Each next seed is the best of ``2 + log k`` candidates drawn with probability proportional to their squared
    distance to the nearest seed so far, best meaning the lowest total squared distance afterwards. ``device``: the
    similarity products run there (:class:`DeviceRows`); the draws stay on the host, so a seed picks the same rows
    wherever the products agree.
    """
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_rows:
        x = x[np.sort(rng.choice(x.shape[0], max_rows, replace=False))]
    n = x.shape[0]
    trials = 2 + int(np.log(max(k, 1)))
    chosen = [int(rng.integers(n))]
    rows = DeviceRows(x, device)
    # squared euclidean distance of unit vectors: 2 - 2 cos
    # on the host, the product of the seeds written before devices existed (a matrix-vector product, whose
    # rounding a one-row matrix product need not share), so the CPU tree stays bit for bit the same
    first = (x @ x[chosen[0]]).astype(np.float64) if device is None else rows.dots(np.array(chosen))[0]
    dist = np.maximum(2.0 - 2.0 * first, 0.0)
    for _ in range(1, min(k, n)):
        total = dist.sum()
        if total <= 0:
            break
        candidates = np.minimum(np.searchsorted(np.cumsum(dist), rng.random(trials) * total), n - 1)
        cand_dist = np.maximum(2.0 - 2.0 * rows.dots(candidates), 0.0)
        new = np.minimum(dist[None, :], cand_dist)
        best = int(np.argmin(new.sum(axis=1)))
        chosen.append(int(candidates[best]))
        dist = new[best]
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def resample_centroids(x: Matrix, centroids: Matrix, resample_size: int, rows: DeviceRows | None = None) -> Matrix:
    """Move every centroid to the normalised mean of the ``resample_size`` points of its cluster closest to it.

    A cluster with no points keeps its centroid. ``resample_size`` <= 0 keeps all points of the cluster (a plain
    spherical Lloyd step). ``rows``: ``x`` already held where the similarities are computed.
    """
    labels, scores = (rows or DeviceRows(x)).nearest(centroids)
    out = centroids.copy()
    order = np.lexsort((np.arange(labels.size), -scores, labels))
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(centroids.shape[0]), side="left")
    ends = np.searchsorted(sorted_labels, np.arange(centroids.shape[0]), side="right")
    for c, (a, b) in enumerate(zip(starts, ends, strict=True)):
        if b == a:
            continue
        stop = b if resample_size <= 0 else min(b, a + resample_size)
        out[c] = x[order[a:stop]].sum(axis=0)
    return l2_normalize(out)


def sums_by_label(x: Matrix, labels: Ints) -> tuple[Ints, Ints, npt.NDArray[np.float64]]:
    """Per distinct label, ascending: (labels, row counts, float64 sums of rows): partial sums of a Lloyd step."""
    if x.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float64)
    from scipy import sparse

    keys, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n = x.shape[0]
    # one sparse (labels x rows) indicator product: a gather-free sum, ~10x faster than sort + reduceat
    indicator = sparse.csr_matrix((np.ones(n), (inverse.ravel(), np.arange(n))), shape=(keys.size, n))
    sums = np.asarray(indicator @ x.astype(np.float64, copy=False))
    return keys.astype(np.int64), counts.astype(np.int64), sums


def refined(tree: Tree, leaf_ids: Ints, sums: npt.NDArray[np.floating]) -> Tree:
    """The tree after one spherical Lloyd update: each leaf moves to the normalised sum of its rows.

    ``leaf_ids`` / ``sums`` hold the summed rows of every leaf that has any; a leaf without rows keeps its
    centroid. Each coarse centroid moves to the normalised sum of its leaves' rows (kept when it has none), so
    the coarse level stays the mean of what lies under it.
    """
    d = tree.leaves.shape[1]
    leaf_sums = np.zeros((tree.n_leaves, d), np.float64)
    leaf_sums[leaf_ids] = sums
    has_rows = np.zeros(tree.n_leaves, bool)
    has_rows[leaf_ids] = True
    leaves = tree.leaves.copy()
    leaves[has_rows] = l2_normalize(leaf_sums[has_rows])
    coarse_sums = np.zeros((tree.coarse.shape[0], d), np.float64)
    np.add.at(coarse_sums, tree.parent, leaf_sums)
    coarse_has = np.bincount(tree.parent, weights=has_rows, minlength=tree.coarse.shape[0]) > 0
    coarse = tree.coarse.copy()
    coarse[coarse_has] = l2_normalize(coarse_sums[coarse_has])
    return Tree(coarse, leaves, tree.parent)


def local_refined(
    x: Matrix,
    leaves: Matrix,
    competitor: Matrix,
    niter: int,
    device: str | None = None,
    rows: DeviceRows | None = None,
) -> tuple[Matrix, Ints, npt.NDArray[np.float64]]:
    """Up to ``niter`` spherical Lloyd steps (fewer once no row changes leaf) of one coarse cluster's ``leaves``
    over rows that may belong elsewhere.

    A row counts for its nearest leaf here only while that leaf beats its ``competitor`` score (its best leaf in
    another coarse cluster, held fixed), so leaves on either side of a coarse boundary share the rows between
    them as flat k-means would. A leaf that claims no row keeps its place. Returns the leaves, and the row
    counts and float64 row sums of the final assignment (one per leaf). The similarities are computed on
    ``device`` (a torch device; None: numpy on the host), or where ``rows`` already holds ``x``.
    """
    leaves = np.array(leaves, dtype=np.float32, copy=True)
    k, d = leaves.shape
    counts = np.zeros(k, np.int64)
    sums = np.zeros((k, d), np.float64)
    if k == 0 or x.shape[0] == 0:
        return leaves, counts, sums
    rows = rows or DeviceRows(x, device)
    previous = None
    for _ in range(niter):
        labels, scores = rows.nearest(leaves)
        labels[scores <= competitor] = -1  # the row stays with its leaf in another coarse cluster
        if previous is not None and np.array_equal(labels, previous):
            break  # converged: the leaves are already the means of their rows
        previous = labels
        ids, n_rows, totals = rows.sums(labels)
        counts[:], sums[:] = 0, 0.0
        counts[ids], sums[ids] = n_rows, totals
        leaves[ids] = l2_normalize(totals)
    return leaves, counts, sums


def replace_fine(tree: Tree, fine: Sequence[tuple[int, Matrix, npt.NDArray[np.float64]]]) -> Tree:
    """``tree`` with the leaves of some coarse clusters replaced after a boundary pass.

    ``fine`` holds, per coarse cluster that received rows, (coarse id, its new leaves in order, their float64 row
    sums). Each such coarse centroid moves to the normalised sum of its leaves' rows; other clusters keep theirs.
    """
    leaves, coarse = tree.leaves.copy(), tree.coarse.copy()
    offsets = tree.offsets
    for c, new, sums in fine:
        leaves[offsets[c] : offsets[c + 1]] = new
        total = sums.sum(axis=0)
        if np.any(total):
            coarse[c] = l2_normalize(total[None, :])[0]
    return Tree(coarse, leaves, tree.parent)
