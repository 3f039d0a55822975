"""Spherical k-means, tree descent and exact top-k over L2-normalised embeddings: plain numpy / faiss kernels.

Every function takes and returns arrays; nothing here knows about Spark. Similarity is the inner product of
L2-normalised float32 vectors (cosine). Wherever two candidates score the same, the one with the lower index
wins, so results do not depend on thread counts or on the order in which groups are processed.

The resampling step follows the idea of Vo et al. 2024 ("Automatic Data Curation for Self-Supervised
Learning", facebookresearch/ssl-data-curation): after k-means, each centroid is moved to the mean of the
``resample_size`` points closest to it, which pulls centroids away from the dense middle of big clusters and
spreads them more evenly over the data's support.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

Matrix = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def as_matrix(vectors: Iterable[Sequence[float] | npt.NDArray[np.floating]], dim: int | None = None) -> Matrix:
    """Stack a sequence of equal-length vectors (a pandas column of arrays) into a C-contiguous float32 matrix.

    ``dim`` is the width used for an empty input; a vector of another width raises ``ValueError``.
    """
    rows = list(vectors)
    if not rows:
        return np.zeros((0, dim or 0), dtype=np.float32)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"embeddings have different lengths: {sorted(lengths)}")
    return np.ascontiguousarray(np.stack([np.asarray(r, dtype=np.float32) for r in rows]))


def arrow_matrix(column: pa.Array | pa.ChunkedArray, dim: int, dtype: type[np.number] = np.float32) -> Matrix:
    """An Arrow list column of numbers as an (n, ``dim``) matrix of ``dtype``, read from the flat values (no row
    loop).

    A null vector or one whose length is not ``dim`` raises ``ValueError``.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    if column.null_count:
        raise ValueError(f"{column.null_count} embeddings are null")
    lengths = column.value_lengths().to_numpy(zero_copy_only=False) if len(column) else np.zeros(0, np.int64)
    if np.any(lengths != dim):
        raise ValueError(f"embeddings have lengths {sorted(set(lengths.tolist()))}, expected {dim}")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(len(column), dim), dtype=dtype)


# Why an embedding cannot be clustered or searched (``embedding_problems``), one reason per row.
NULL_EMBEDDING = "null_embedding"
WRONG_DIMENSION = "wrong_dimension"
NON_FINITE = "non_finite_embedding"
ZERO_VECTOR = "zero_vector"


def embedding_problems(column: pa.Array | pa.ChunkedArray, dim: int) -> tuple[Ints, list[str], list[str]]:
    """The rows of an Arrow list<float> column that ``arrow_matrix`` must not take as ``dim``-wide unit vectors:
    (row indices, reasons, details). A null vector, a length other than ``dim``, a NaN, infinite or null value,
    and an all-zero vector (it has no direction) are each a reason; everything else passes, in one vectorised
    pass over the values.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.list_(pa.float32()))
    n = len(column)
    null = column.is_null().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    lengths = pc.fill_null(column.value_lengths(), -1).to_numpy(zero_copy_only=False) if n else np.zeros(0, int)
    wrong = ~null & (lengths != dim)
    fits = np.flatnonzero(~null & ~wrong)
    values = column.take(pa.array(fits)).flatten().to_numpy(zero_copy_only=False)  # null values come out NaN
    m = values.astype(np.float64, copy=False).reshape(fits.size, dim)
    finite = np.isfinite(m).all(axis=1)
    zero = finite & ~np.any(m, axis=1)
    reason = np.full(n, "", dtype=object)
    detail = np.full(n, "", dtype=object)
    reason[null] = NULL_EMBEDDING
    reason[wrong] = WRONG_DIMENSION
    detail[wrong] = [f"length {length}, expected {dim}" for length in lengths[wrong]]
    reason[fits[~finite]] = NON_FINITE
    not_finite = (~np.isfinite(m[~finite])).sum(axis=1)
    detail[fits[~finite]] = [f"{k} of {dim} values NaN, infinite or null" for k in not_finite.tolist()]
    reason[fits[zero]] = ZERO_VECTOR
    bad = np.flatnonzero(reason != "")
    return bad.astype(np.int64), reason[bad].tolist(), detail[bad].tolist()


ARROW_CHUNK_ROWS = 1 << 16  # list offsets are int32: one chunk of 2M x 768 floats would overflow them


def matrix_column(m: npt.NDArray[np.number], dtype: type[np.number] = np.float32) -> pa.ChunkedArray:
    """The rows of matrix ``m`` as an Arrow list column of ``dtype`` (non-null elements): ``arrow_matrix``'s inverse.

    Built from the flat values (no Python object per value), in chunks of ``ARROW_CHUNK_ROWS`` rows.
    """
    m = np.ascontiguousarray(m, dtype)
    list_type = pa.list_(pa.field("element", pa.from_numpy_dtype(m.dtype), nullable=False))
    chunks = []
    for start in range(0, m.shape[0], ARROW_CHUNK_ROWS):
        part = m[start : start + ARROW_CHUNK_ROWS]
        offsets = pa.array(np.arange(part.shape[0] + 1, dtype=np.int32) * m.shape[1])
        chunks.append(pa.ListArray.from_arrays(offsets, pa.array(part.ravel()), type=list_type))
    return pa.chunked_array(chunks, type=list_type)


def l2_normalize(x: npt.ArrayLike) -> Matrix:
    """Rows scaled to unit length (a zero row stays zero)."""
    m = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.ascontiguousarray(m / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


def top_p(x: Matrix, centroids: Matrix, p: int, chunk_size: int = 16_384) -> tuple[Ints, Matrix]:
    """The ``p`` centroids most similar to each row, best first: (indices (n, p'), scores (n, p')), p' = min(p, k).

    Similarities are computed by one matrix product per chunk of ``chunk_size`` rows, so memory stays at
    ``chunk_size * k`` floats. Ties go to the lower centroid index.
    """
    n, k = x.shape[0], centroids.shape[0]
    width = min(p, k)
    idx = np.zeros((n, width), dtype=np.int64)
    scores = np.zeros((n, width), dtype=np.float32)
    if n == 0 or width == 0:
        return idx, scores
    for start in range(0, n, chunk_size):
        sims = x[start : start + chunk_size] @ centroids.T
        best = _top_columns(sims, width)
        idx[start : start + chunk_size] = best
        scores[start : start + chunk_size] = np.take_along_axis(sims, best, axis=1)
    return idx, scores


def assign(x: Matrix, centroids: Matrix, chunk_size: int = 16_384) -> tuple[Ints, Matrix]:
    """Nearest centroid of every row (cosine): (labels (n,), scores (n,)); ties go to the lower index."""
    idx, scores = top_p(x, centroids, 1, chunk_size)
    if idx.shape[1] == 0:
        return np.full(x.shape[0], -1, dtype=np.int64), np.zeros(x.shape[0], dtype=np.float32)
    return idx[:, 0], scores[:, 0]


def _top_columns(sims: Matrix, width: int) -> Ints:
    """Column indices of the ``width`` largest values of each row, best first, ties to the lower column."""
    k = sims.shape[1]
    if width == 1 and k > 0:  # np.argmax returns the first of equal maxima
        return np.argmax(sims, axis=1).astype(np.int64)[:, None]
    if width >= k:
        return np.argsort(-sims, axis=1, kind="stable").astype(np.int64)
    part = np.argpartition(-sims, width - 1, axis=1)[:, :width]
    kth = np.take_along_axis(sims, part, axis=1).min(axis=1)
    # argpartition picks an arbitrary member of a tie at the cut; redo those (rare) rows with a stable sort.
    tied = np.flatnonzero((sims >= kth[:, None]).sum(axis=1) > width)
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    best = np.take_along_axis(part, order, axis=1).astype(np.int64)
    if tied.size:
        best[tied] = np.argsort(-sims[tied], axis=1, kind="stable")[:, :width]
    return best


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
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n == 0 or k <= 0:
        return np.zeros((0, d), dtype=np.float32)
    distinct = np.unique(x, axis=0)
    if distinct.shape[0] <= k:
        return l2_normalize(distinct)
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


def kmeans_plus_plus(x: Matrix, k: int, seed: int, max_rows: int = 65_536) -> Matrix:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; as in scikit-learn) on at most ``max_rows`` rows.

    Each next seed is the best of ``2 + log k`` candidates drawn with probability proportional to their squared
    distance to the nearest seed so far, best meaning the lowest total squared distance afterwards.
    """
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_rows:
        x = x[np.sort(rng.choice(x.shape[0], max_rows, replace=False))]
    n = x.shape[0]
    trials = 2 + int(np.log(max(k, 1)))
    chosen = [int(rng.integers(n))]
    # squared euclidean distance of unit vectors: 2 - 2 cos
    dist = np.maximum(2.0 - 2.0 * (x @ x[chosen[0]]).astype(np.float64), 0.0)
    for _ in range(1, min(k, n)):
        total = dist.sum()
        if total <= 0:
            break
        candidates = np.minimum(np.searchsorted(np.cumsum(dist), rng.random(trials) * total), n - 1)
        cand_dist = np.maximum(2.0 - 2.0 * (x[candidates] @ x.T).astype(np.float64), 0.0)
        new = np.minimum(dist[None, :], cand_dist)
        best = int(np.argmin(new.sum(axis=1)))
        chosen.append(int(candidates[best]))
        dist = new[best]
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def resample_centroids(x: Matrix, centroids: Matrix, resample_size: int) -> Matrix:
    """Move every centroid to the normalised mean of the ``resample_size`` points of its cluster closest to it.

    A cluster with no points keeps its centroid. ``resample_size`` <= 0 keeps all points of the cluster (a plain
    spherical Lloyd step).
    """
    labels, scores = assign(x, centroids)
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


def descend(x: Matrix, tree: Tree, p: int, coarse_probe: int, max_cells: int = 1 << 24) -> tuple[Ints, Matrix, Ints]:
    """The ``p`` nearest leaves of each row, found by descending ``tree``: (leaf ids, scores, dot products).

    Each row is compared with every coarse centroid, then with the leaves of its ``coarse_probe`` nearest coarse
    clusters only; the best ``p`` of those leaves are returned, best first, padded with -1 (score -inf) when
    fewer leaves were seen; equal scores go to the lower leaf id. The third array counts the similarity
    computations spent per row. Rows are processed in chunks whose candidate score matrix holds at most
    ``max_cells`` floats.
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
    chunk = max(1, max_cells // (probe * fan))
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
        best = _top_columns(scores, width)
        best_scores = np.take_along_axis(scores, best, axis=1)
        leaves = offsets[np.take_along_axis(probed, best // fan, axis=1)] + best % fan
        seen = np.isfinite(best_scores)
        leaf_ids[start : start + m, :width] = np.where(seen, leaves, -1)
        leaf_scores[start : start + m, :width] = best_scores
    return leaf_ids, leaf_scores, cost


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


def local_refined(
    x: Matrix, leaves: Matrix, competitor: Matrix, niter: int
) -> tuple[Matrix, Ints, npt.NDArray[np.float64]]:
    """Up to ``niter`` spherical Lloyd steps (fewer once no row changes leaf) of one coarse cluster's ``leaves``
    over rows that may belong elsewhere.

    A row counts for its nearest leaf here only while that leaf beats its ``competitor`` score (its best leaf in
    another coarse cluster, held fixed), so leaves on either side of a coarse boundary share the rows between
    them as flat k-means would. A leaf that claims no row keeps its place. Returns the leaves, and the row
    counts and float64 row sums of the final assignment (one per leaf).
    """
    leaves = np.array(leaves, dtype=np.float32, copy=True)
    k, d = leaves.shape
    counts = np.zeros(k, np.int64)
    sums = np.zeros((k, d), np.float64)
    if k == 0 or x.shape[0] == 0:
        return leaves, counts, sums
    previous = None
    for _ in range(niter):
        labels, scores = assign(x, leaves)
        labels[scores <= competitor] = -1  # the row stays with its leaf in another coarse cluster
        if previous is not None and np.array_equal(labels, previous):
            break  # converged: the leaves are already the means of their rows
        previous = labels
        claimed = labels >= 0
        ids, n_rows, totals = sums_by_label(x[claimed], labels[claimed])
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


def boundary_pass_local(x: Matrix, tree: Tree, coarse_probe: int, margin: float, niter: int) -> Tree:
    """One boundary pass over rows held in memory (``realsyn.clustering.boundary_pass`` runs it in Spark): rows
    routed by :func:`boundary_rows`, each coarse cluster's leaves retrained by :func:`local_refined` over its rows
    in row order, and the tree rebuilt by :func:`replace_fine`."""
    rows, owner, competitor = boundary_rows(x, tree, coarse_probe, margin)
    offsets, parts = tree.offsets, []
    for c in np.unique(owner):
        mine = owner == c
        new, _, sums = local_refined(x[rows[mine]], tree.leaves[offsets[c] : offsets[c + 1]], competitor[mine], niter)
        parts.append((int(c), new, sums))
    return replace_fine(tree, parts)


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


def rank_within(
    groups: Ints, keys: Ints, scores: npt.NDArray[np.floating]
) -> tuple[Ints, Ints, npt.NDArray[np.floating], Ints]:
    """Sort candidates by (group, score descending, key ascending) and number them 0, 1, ... within each group.

    Returns the sorted groups, keys, scores and the rank of each candidate inside its group.
    """
    order = np.lexsort((keys, -scores, groups))
    g, k, s = groups[order], keys[order], scores[order]
    if g.size == 0:
        return g, k, s, np.zeros(0, dtype=np.int64)
    first = np.r_[True, g[1:] != g[:-1]]
    starts = np.flatnonzero(first)
    rank = np.arange(g.size, dtype=np.int64) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
    return g, k, s, rank


def top_k_exact(queries: Matrix, keys: Matrix, k: int) -> tuple[Ints, Matrix]:
    """Exact top-``k`` keys of every query by one matrix product: (indices (nq, k'), scores), k' = min(k, nk).

    Best first; equal scores go to the lower key index, so callers that sort keys by id break ties by id.
    """
    nq, nk = queries.shape[0], keys.shape[0]
    width = min(k, nk)
    if nq == 0 or width == 0:
        return np.zeros((nq, width), dtype=np.int64), np.zeros((nq, width), dtype=np.float32)
    sims = queries @ keys.T
    best = _top_columns(sims, width)
    return best, np.take_along_axis(sims, best, axis=1)


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
) -> tuple[Ints, Matrix]:
    """Top-``k`` keys of every query as :func:`top_k_exact` returns them, through ``prefilter``'s shortlist
    (exact when ``prefilter`` is None or the keys fit in the shortlist). Scores are exact; ties go to the lower
    key index among the shortlisted keys. ``queries_low`` / ``keys_low``: the inputs already projected
    (:meth:`Prefilter.queries_low`, :meth:`Prefilter.keys_low`), so that a key or query scored in many groups
    is projected once."""
    nq, nk = queries.shape[0], keys.shape[0]
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
        short = np.sort(_top_columns(approx, prefilter.shortlist), axis=1)  # ascending: stable ties to lower key
        exact = np.einsum("qd,qld->ql", q, keys[short]).astype(np.float32)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :width]
        out_idx[start : start + q.shape[0]] = np.take_along_axis(short, order, axis=1)
        out_scores[start : start + q.shape[0]] = np.take_along_axis(exact, order, axis=1)
    return out_idx, out_scores


def merge_top_k(
    query_ids: Ints, key_ids: Ints, scores: npt.NDArray[np.floating], k: int
) -> tuple[Ints, Ints, npt.NDArray[np.floating], Ints]:
    """Merge partial top-k lists (one per leaf or chunk) into the final top-``k`` per query.

    Inputs are flat candidate arrays; the output keeps, per query, its ``k`` best candidates ordered by score
    descending then key id ascending: (query ids, key ids, scores, rank 0..k-1).
    """
    g, kk, s, rank = rank_within(query_ids, key_ids, scores)
    keep = rank < k
    return g[keep], kk[keep], s[keep], rank[keep]


def mean_cosine_distance(x: Matrix, centroids: Matrix) -> float:
    """Mean of 1 - cos(point, nearest centroid): the loss that spherical k-means minimises."""
    if x.shape[0] == 0:
        return 0.0
    _, scores = assign(x, centroids)
    return float(1.0 - scores.astype(np.float64).mean())


def hierarchical_kmeans(
    x: Matrix,
    leaf_size: int,
    coarse_clusters: int = 0,
    *,
    niter: int = 20,
    seed: int = 0,
    max_points_per_centroid: int = 256,
    resampling_steps: int = 0,
    resample_size: int = 0,
    refine_steps: int = 0,
    assign_coarse_probe: int = 3,
    boundary_passes: int = 0,
    boundary_margin: float = 0.05,
) -> Tree:
    """The two-level tree of realsyn.clustering on one machine (arrays in memory), with random samples.

    ``coarse_clusters`` 0 means about sqrt(n / leaf_size); each coarse cluster of n_c rows gets
    max(1, round(n_c / leaf_size)) leaves. ``boundary_passes`` boundary passes (:func:`boundary_pass_local`) over
    a sample of about ``max_points_per_centroid`` rows per leaf follow, then ``refine_steps`` Lloyd steps over all
    rows, each row going to its nearest leaf under its ``assign_coarse_probe`` nearest coarse clusters.
    """
    n, d = x.shape
    if n == 0:
        return Tree.from_parts(np.zeros((0, d), np.float32), [])
    k1 = coarse_clusters or max(1, round(float(np.sqrt(n / leaf_size))))
    rng = np.random.default_rng(seed)
    kwargs = {
        "niter": niter,
        "max_points_per_centroid": max_points_per_centroid,
        "resampling_steps": resampling_steps,
        "resample_size": resample_size,
    }

    def sample(rows: Ints, k: int) -> Ints:
        cap = k * max_points_per_centroid
        return rows if rows.size <= cap else np.sort(rng.choice(rows, cap, replace=False))

    coarse = spherical_kmeans(x[sample(np.arange(n), k1)], k1, seed=seed, **kwargs)  # type: ignore[arg-type]
    labels, _ = assign(x, coarse)
    fine = []
    for c in range(coarse.shape[0]):
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            fine.append(np.zeros((0, d), np.float32))
            continue
        k = max(1, round(rows.size / leaf_size))
        fine.append(spherical_kmeans(x[sample(rows, k)], k, seed=seed + c, **kwargs))  # type: ignore[arg-type]
    tree = Tree.from_parts(coarse, fine)
    # the passes train on about max_points_per_centroid rows per leaf, as the fine level does
    share = max_points_per_centroid / leaf_size
    passes_x = x if share >= 1 else x[np.sort(rng.choice(n, round(n * share), replace=False))]
    for _ in range(boundary_passes):
        tree = boundary_pass_local(passes_x, tree, assign_coarse_probe, boundary_margin, niter)
    for _ in range(refine_steps):
        labels = nearest_leaf(x, tree, assign_coarse_probe)[0]
        ids, _, sums = sums_by_label(x, labels)
        tree = refined(tree, ids, sums)
    return tree
