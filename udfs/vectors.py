"""Vector kernels over L2-normalised embeddings: Arrow <-> matrix, normalisation, nearest centroids, exact top-k.

Every function takes and returns arrays; nothing here knows about Spark. Similarity is the inner product of
L2-normalised float32 vectors (cosine). Wherever two candidates score the same, the one with the lower index
wins, so results do not depend on thread counts or on the order in which groups are processed
(:func:`top_columns_on` keeps the rule for torch matrices on a GPU). The k-means tree and the search over it are
in udfs/tree.py, its training in udfs/kmeans.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

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
        best = top_columns(sims, width)
        idx[start : start + chunk_size] = best
        scores[start : start + chunk_size] = np.take_along_axis(sims, best, axis=1)
    return idx, scores


def assign(x: Matrix, centroids: Matrix, chunk_size: int = 16_384) -> tuple[Ints, Matrix]:
    """Nearest centroid of every row (cosine): (labels (n,), scores (n,)); ties go to the lower index."""
    idx, scores = top_p(x, centroids, 1, chunk_size)
    if idx.shape[1] == 0:
        return np.full(x.shape[0], -1, dtype=np.int64), np.zeros(x.shape[0], dtype=np.float32)
    return idx[:, 0], scores[:, 0]


def top_columns(sims: Matrix, width: int) -> Ints:
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


def to_device(m: npt.ArrayLike, device: str) -> Any:
    """``m`` as a float32 torch matrix on ``device`` (one copy)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(m, np.float32)).to(device)


def top_columns_on(sims: Any, width: int) -> Any:
    """:func:`top_columns` of a torch matrix, on its device: the same columns in the same order, ties to the
    lower column (``torch.topk`` alone leaves the order of equal values open)."""
    import torch

    k = sims.shape[1]
    if width == 1 and k > 0:  # torch.argmax returns the first of equal maxima
        return sims.argmax(dim=1, keepdim=True)
    if width >= k:
        return torch.sort(sims, dim=1, descending=True, stable=True).indices
    vals, part = torch.topk(sims, width, dim=1)
    part, perm = torch.sort(part, dim=1)  # ascending columns, so the stable sort below puts ties lower first
    order = torch.sort(vals.gather(1, perm), dim=1, descending=True, stable=True).indices
    best = part.gather(1, order)
    # which member of a tie at the cut topk kept is open; redo those (rare) rows with a stable sort
    tied = torch.nonzero((sims >= vals[:, -1:]).sum(dim=1) > width).squeeze(1)
    if tied.numel():
        best[tied] = torch.sort(sims[tied], dim=1, descending=True, stable=True).indices[:, :width]
    return best


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
    best = top_columns(sims, width)
    return best, np.take_along_axis(sims, best, axis=1)


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
