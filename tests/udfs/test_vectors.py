"""Vector kernels (udfs.vectors): Arrow <-> matrix, unusable embeddings, nearest centroids, exact top-k and the
merge of partial top-k lists, on hand-worked data, on the host and through torch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import udfs.vectors
from tests.support.kernels import TORCH
from udfs.vectors import (
    arrow_matrix,
    as_matrix,
    assign,
    l2_normalize,
    matrix_column,
    mean_cosine_distance,
    merge_top_k,
    top_columns,
    top_columns_on,
    top_k_exact,
    top_p,
)


def test_empty_input() -> None:
    empty = np.zeros((0, 4), np.float32)
    idx, scores = top_k_exact(empty, l2_normalize(np.eye(4)), 3)
    assert idx.shape == scores.shape == (0, 3)
    labels, _ = assign(empty, l2_normalize(np.eye(4)))
    assert labels.shape == (0,)
    assert as_matrix([], dim=4).shape == (0, 4)
    assert mean_cosine_distance(empty, l2_normalize(np.eye(4))) == 0.0


def test_as_matrix_rejects_ragged_vectors() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        as_matrix([[1.0, 0.0], [1.0]])


def test_top_k_exact_by_hand() -> None:
    keys = np.array([[1, 0], [0, 1], [-1, 0], [0.6, 0.8]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    idx, scores = top_k_exact(queries, keys, 3)
    # query (1,0): scores 1, 0, -1, 0.6 -> keys 0, 3, 1
    # query (0,1): scores 0, 1, 0, 0.8 -> keys 1, 3, then the tie 0 / 2 goes to the lower index 0
    np.testing.assert_array_equal(idx, [[0, 3, 1], [1, 3, 0]])
    np.testing.assert_allclose(scores, [[1.0, 0.6, 0.0], [1.0, 0.8, 0.0]], atol=1e-6)


def test_top_k_with_fewer_keys_than_k() -> None:
    idx, scores = top_k_exact(np.array([[1, 0]], np.float32), np.array([[0, 1], [1, 0]], np.float32), 3)
    np.testing.assert_array_equal(idx, [[1, 0]])
    np.testing.assert_allclose(scores, [[1.0, 0.0]])


def test_top_p_breaks_ties_at_the_cut_by_index() -> None:
    centroids = np.array([[0, 1], [1, 0], [0, 1], [0, 1]], np.float32)
    idx, _ = top_p(np.array([[0, 1]], np.float32), centroids, 2)
    np.testing.assert_array_equal(idx, [[0, 2]])


def test_merge_top_k_by_hand() -> None:
    queries = np.array([7, 7, 7, 7, 9, 9])
    keys = np.array([30, 10, 20, 40, 5, 6])
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.2, 0.3])
    q, k, s, rank = merge_top_k(queries, keys, scores, 3)
    # query 7: 0.9 (key 10), then the tie 0.5 goes to key 20 before key 30; query 9: 0.3 then 0.2
    np.testing.assert_array_equal(q, [7, 7, 7, 9, 9])
    np.testing.assert_array_equal(k, [10, 20, 30, 6, 5])
    np.testing.assert_array_equal(rank, [0, 1, 2, 0, 1])
    np.testing.assert_allclose(s, [0.9, 0.5, 0.5, 0.3, 0.2])


def test_arrow_matrix_reads_flat_values_of_a_sliced_column() -> None:
    column = pa.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32()))
    np.testing.assert_array_equal(arrow_matrix(column.slice(1), 2), [[3.0, 4.0], [5.0, 6.0]])
    chunked = pa.chunked_array([column.slice(0, 1), column.slice(2)])
    np.testing.assert_array_equal(arrow_matrix(chunked, 2, np.float64), [[1.0, 2.0], [5.0, 6.0]])
    assert arrow_matrix(column.slice(0, 0), 2).shape == (0, 2)


def test_matrix_column_is_arrow_matrix_inverse_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udfs.vectors, "ARROW_CHUNK_ROWS", 2)
    m = np.arange(10, dtype=np.float64).reshape(5, 2) / 4
    column = matrix_column(m, np.float64)
    assert column.num_chunks == 3 and column.type.value_type == pa.float64()
    assert column.to_pylist() == [[0.0, 0.25], [0.5, 0.75], [1.0, 1.25], [1.5, 1.75], [2.0, 2.25]]
    np.testing.assert_array_equal(arrow_matrix(column, 2, np.float64), m)
    assert matrix_column(np.zeros((0, 3), np.float32)).to_pylist() == []


def test_arrow_matrix_rejects_ragged_and_null_vectors() -> None:
    with pytest.raises(ValueError, match=r"lengths \[1, 2\], expected 2"):
        arrow_matrix(pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())), 2)
    with pytest.raises(ValueError, match="1 embeddings are null"):
        arrow_matrix(pa.array([[1.0, 2.0], None], pa.list_(pa.float32())), 2)


def test_embedding_problems_names_each_unusable_row() -> None:
    nan, inf = float("nan"), float("inf")
    rows = [[0.6, 0.8], None, [1.0], [nan, 1.0], [0.0, 0.0], [None, 1.0], [0.5, -inf], [3.0, 4.0, 0.0], [-1.0, 0.0]]
    column = pa.chunked_array([rows[:4], rows[4:]], pa.list_(pa.float32()))
    bad, reasons, details = udfs.vectors.embedding_problems(column, 2)
    assert bad.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert reasons == [
        udfs.vectors.NULL_EMBEDDING,
        udfs.vectors.WRONG_DIMENSION,
        udfs.vectors.NON_FINITE,
        udfs.vectors.ZERO_VECTOR,
        udfs.vectors.NON_FINITE,
        udfs.vectors.NON_FINITE,
        udfs.vectors.WRONG_DIMENSION,
    ]
    assert details[1] == "length 1, expected 2" and details[2] == "1 of 2 values NaN, infinite or null"
    # what passes is exactly what arrow_matrix reads
    good = pa.array([rows[0], rows[8]], pa.list_(pa.float64()))
    assert udfs.vectors.embedding_problems(good, 2)[0].size == 0
    np.testing.assert_array_equal(udfs.vectors.arrow_matrix(good, 2), np.float32([[0.6, 0.8], [-1.0, 0.0]]))
    assert udfs.vectors.embedding_problems(pa.chunked_array([], pa.list_(pa.float32())), 2)[0].size == 0


# The torch path of the ranking kernels (what a GPU task runs): the host's answers, ties included.


def test_top_columns_on_a_device_break_ties_as_on_the_host() -> None:
    sims = np.array([[0.5, 0.9, 0.5, 0.9, 0.1], [0.2, -np.inf, 0.7, -np.inf, -np.inf]], np.float32)
    on = torch.from_numpy(sims).to(TORCH)
    # row 0: the tie 1 / 3 at the top is ordered by column, the tie 0 / 2 at the cut goes to column 0
    assert top_columns_on(on, 3).cpu().tolist() == [[1, 3, 0], [2, 0, 1]]
    assert top_columns_on(on, 1).cpu().tolist() == [[1], [2]]
    assert top_columns_on(on, 5).cpu().tolist() == [[1, 3, 0, 2, 4], [2, 0, 1, 3, 4]]
    ties = np.random.default_rng(0).integers(0, 4, (300, 20)).astype(np.float32)  # ties in most rows
    for width in (2, 3, 7, 19):
        on = torch.from_numpy(ties).to(TORCH)
        np.testing.assert_array_equal(top_columns_on(on, width).cpu().numpy(), top_columns(ties, width))
