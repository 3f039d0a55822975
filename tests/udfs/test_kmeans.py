"""Spherical k-means, tree descent and exact top-k kernels, on planted and hand-worked data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import udfs.tree
import udfs.vectors
from udfs.kmeans import (
    DeviceRows,
    kmeans_plus_plus,
    local_refined,
    refined,
    replace_fine,
    resample_centroids,
    spherical_kmeans,
    sums_by_label,
)
from udfs.tree import Prefilter, Tree, boundary_rows, descend, nearest_leaf, top_k_prefiltered, tree_on
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


def planted(sizes: list[int], dim: int = 16, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points around orthogonal unit centres (basis vectors): (points, planted label of each point)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = np.eye(dim, dtype=np.float32)[: len(sizes)]
    return l2_normalize(centres[labels] + noise * rng.normal(size=(labels.size, dim))), labels


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when labelings a and b group the points identically (up to renaming the labels)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_planted_clusters_are_recovered() -> None:
    x, labels = planted([120, 80, 60, 40, 20])
    centroids = spherical_kmeans(x, 5, seed=3)
    found, _ = assign(x, centroids)
    assert same_partition(found, labels)
    # each recovered centroid sits on one planted centre
    best = (centroids @ np.eye(16, dtype=np.float32)[:5].T).max(axis=1)
    assert np.all(best > 0.99)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)


def test_skewed_and_tiny_clusters_get_their_own_centroid() -> None:
    x, labels = planted([400, 40, 10])
    centroids = spherical_kmeans(x, 3, seed=0)
    found, _ = assign(x, centroids)
    assert same_partition(found, labels)


def test_same_seed_same_centroids() -> None:
    x, _ = planted([50] * 8, noise=0.4, seed=1)
    a = spherical_kmeans(x, 6, seed=7)
    b = spherical_kmeans(x[::-1].copy(), 6, seed=7)
    c = spherical_kmeans(x, 6, seed=7)
    np.testing.assert_array_equal(a, c)
    assert a.shape == b.shape == (6, 16)


def test_fewer_distinct_points_than_k_returns_the_points_sorted() -> None:
    x = l2_normalize(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(spherical_kmeans(x, 5), np.array([[0.0, 1.0], [1.0, 0.0]], np.float32))


def test_empty_input() -> None:
    empty = np.zeros((0, 4), np.float32)
    assert spherical_kmeans(empty, 3).shape == (0, 4)
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


def random_tree(seed: int = 0) -> tuple[Tree, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = l2_normalize(rng.normal(size=(2_000, 12)))
    coarse = spherical_kmeans(x, 6, seed=seed)
    labels, _ = assign(x, coarse)
    fine = [spherical_kmeans(x[labels == c], 1 + c, seed=seed) for c in range(6)]  # uneven fan-out
    return Tree.from_parts(coarse, fine), x


def test_descend_with_every_leaf_probed_is_a_full_sort() -> None:
    tree, _ = random_tree()
    q = l2_normalize(np.random.default_rng(5).normal(size=(300, 12)))
    leaves, scores, cost = descend(q, tree, tree.n_leaves, coarse_probe=6, max_cells=64 * 6 * 6)
    expected = np.argsort(-(q @ tree.leaves.T), axis=1, kind="stable")
    np.testing.assert_array_equal(leaves, expected)
    # float32 products summed in another order differ by a few ulps: an absolute bound for scores near 0.
    np.testing.assert_allclose(scores, np.take_along_axis(q @ tree.leaves.T, expected, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cost, 6 + tree.n_leaves)


def test_descend_only_looks_under_the_probed_coarse_clusters() -> None:
    tree, _ = random_tree()
    q = l2_normalize(np.random.default_rng(6).normal(size=(200, 12)))
    leaves, _, cost = descend(q, tree, 3, coarse_probe=1)
    nearest_coarse, _ = assign(q, tree.coarse)
    sizes = np.diff(tree.offsets)
    for row in range(q.shape[0]):
        c = nearest_coarse[row]
        a, b = tree.offsets[c], tree.offsets[c + 1]
        own = np.argsort(-(q[row] @ tree.leaves[a:b].T), kind="stable")[:3] + a
        expected = np.full(3, -1)
        expected[: own.size] = own
        np.testing.assert_array_equal(leaves[row], expected)
        assert cost[row] == 6 + sizes[c]


def test_tree_offsets_and_parents() -> None:
    coarse = np.eye(3, dtype=np.float32)
    fine = [np.eye(3, dtype=np.float32)[:2], np.zeros((0, 3), np.float32), np.eye(3, dtype=np.float32)[2:]]
    tree = Tree.from_parts(coarse, fine)
    np.testing.assert_array_equal(tree.parent, [0, 0, 2])
    np.testing.assert_array_equal(tree.offsets, [0, 2, 2, 3])


def test_resample_moves_centroid_to_its_closest_points() -> None:
    x = l2_normalize(np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0.01]], np.float32))
    start = l2_normalize(np.array([[1, 0.1], [-1, 0.0]], np.float32))
    moved = resample_centroids(x, start, resample_size=2)
    # cluster 0 = first three points; its two closest to (1, 0.1) are (1, 0) and (0.8, 0.6)
    np.testing.assert_allclose(moved[0], l2_normalize(np.array([[1.8, 0.6]]))[0], rtol=1e-6)
    np.testing.assert_allclose(moved[1], x[3], rtol=1e-6)


def test_resampling_steps_keep_unit_centroids_and_recover_planted_clusters() -> None:
    x, labels = planted([200, 50, 20])
    centroids = spherical_kmeans(x, 3, seed=0, resampling_steps=2, resample_size=10)
    found, _ = assign(x, centroids)
    assert same_partition(found, labels)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)


def test_kmeans_plus_plus_seeds_each_far_cluster() -> None:
    x, labels = planted([300, 40, 10])
    seeds = kmeans_plus_plus(x, 3, seed=0)
    found, _ = assign(x, seeds)
    assert same_partition(found, labels)


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


def test_sums_by_label_by_hand() -> None:
    x = np.array([[1, 0], [0, 1], [2, 2], [1, 1]], np.float32)
    labels, counts, sums = sums_by_label(x, np.array([5, 2, 5, 5]))
    np.testing.assert_array_equal(labels, [2, 5])
    np.testing.assert_array_equal(counts, [1, 3])
    np.testing.assert_array_equal(sums, [[0, 1], [4, 3]])


def test_refined_moves_leaves_to_their_rows_and_parents_to_their_leaves() -> None:
    eye = np.eye(3, dtype=np.float32)
    tree = Tree.from_parts(eye[:2], [eye[[0, 1]], eye[[2]]])  # coarse 0: leaves 0, 1; coarse 1: leaf 2
    # leaf 0 gets rows summing to (3, 4, 0); leaf 1 none (keeps its centroid); leaf 2 rows summing to (0, 0, 2)
    new = refined(tree, np.array([0, 2]), np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]))
    np.testing.assert_allclose(new.leaves, [[0.6, 0.8, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(new.coarse, [[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(new.parent, tree.parent)


def test_refine_steps_move_off_centre_leaves_onto_the_planted_means() -> None:
    # four planted clusters; the tree's leaves start off-centre (as after training on a small sample), and the
    # leaf of cluster 1 sits under the coarse centroid of clusters 2 and 3: Lloyd steps that look under the two
    # nearest coarse clusters give every leaf exactly one planted cluster and move it onto that cluster's mean
    x, labels = planted([50, 50, 50, 50], dim=8, noise=0.02, seed=2)
    e = np.eye(8, dtype=np.float32)
    start = Tree.from_parts(
        l2_normalize(e[[0, 2]] + e[[1, 3]]),
        [l2_normalize(e[[0]] + 0.4 * e[[4]]), l2_normalize(e[[1, 2, 3]] + 0.4 * e[[5, 6, 7]])],
    )
    tree = start
    for _ in range(2):
        ids, _, sums = sums_by_label(x, descend(x, tree, 1, 2)[0][:, 0])
        tree = refined(tree, ids, sums)
    leaf_of = descend(x, tree, 1, 2)[0][:, 0]
    assert same_partition(leaf_of, labels)
    means = l2_normalize(np.stack([x[labels == c].mean(axis=0) for c in range(4)]))
    np.testing.assert_allclose(tree.leaves[leaf_of[[0, 50, 100, 150]]], means, atol=1e-5)


def test_nearest_leaf_is_the_best_leaf_under_the_probed_coarse_clusters() -> None:
    tree, _ = random_tree()
    q = l2_normalize(np.random.default_rng(7).normal(size=(300, 12)))
    sims = q @ tree.leaves.T
    for probe in (1, 2, 6):
        probed = np.argsort(-(q @ tree.coarse.T), axis=1, kind="stable")[:, :probe]
        allowed = (tree.parent[None, None, :] == probed[:, :, None]).any(axis=1)
        expected = np.argmax(np.where(allowed, sims, -np.inf), axis=1)
        leaves, scores = nearest_leaf(q, tree, probe)
        np.testing.assert_array_equal(leaves, expected)
        np.testing.assert_allclose(scores, sims[np.arange(q.shape[0]), expected], rtol=1e-5)
        np.testing.assert_array_equal(leaves, descend(q, tree, 1, probe)[0][:, 0])


def three_axis_tree() -> Tree:
    """Coarse clusters along the axes of R^3, each with one leaf on its axis."""
    eye = np.eye(3, dtype=np.float32)
    return Tree.from_parts(eye, [eye[[0]], eye[[1]], eye[[2]]])


def test_boundary_rows_join_the_clusters_within_the_margin_with_their_best_elsewhere() -> None:
    x = np.array([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], np.float32)  # leaf scores (0.8, 0.6, 0) and (0, 0, 1)
    rows, owner, competitor = boundary_rows(x, three_axis_tree(), coarse_probe=3, margin=0.25)
    assert list(zip(rows.tolist(), owner.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 2)]
    np.testing.assert_allclose(competitor, [0.6, 0.8, 0.0])
    rows, owner, _ = boundary_rows(x, three_axis_tree(), coarse_probe=3, margin=0.1)
    assert list(zip(rows.tolist(), owner.tolist(), strict=True)) == [(0, 0), (1, 2)]
    rows, owner, competitor = boundary_rows(x, three_axis_tree(), coarse_probe=1, margin=1.0)
    assert (rows.tolist(), owner.tolist(), competitor.tolist()) == ([0, 1], [0, 2], [-np.inf, -np.inf])


def test_local_refined_counts_a_row_only_where_it_beats_its_competitor() -> None:
    eye = np.eye(3, dtype=np.float32)
    x = l2_normalize(np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, 1.0, 0.0]], np.float32))
    # row 1 is nearest leaf 0 here (0.89) but scores 0.95 elsewhere: it stays out; leaf 2 claims no row
    leaves, counts, sums = local_refined(x, eye, np.array([-np.inf, 0.95, -np.inf], np.float32), niter=5)
    np.testing.assert_allclose(leaves, [x[0], x[2], eye[2]], atol=1e-6)
    np.testing.assert_array_equal(counts, [1, 1, 0])
    np.testing.assert_allclose(sums, [x[0], x[2], np.zeros(3)], atol=1e-6)
    # with nothing better elsewhere, row 1 joins leaf 0, which moves to the mean of rows 0 and 1
    leaves, counts, _ = local_refined(x, eye, np.full(3, -np.inf, np.float32), niter=5)
    np.testing.assert_allclose(leaves[0], l2_normalize(x[:2].sum(axis=0, keepdims=True))[0], atol=1e-6)
    np.testing.assert_array_equal(counts, [2, 1, 0])


def test_replace_fine_moves_each_retrained_coarse_centroid_to_its_leaves_rows() -> None:
    tree = three_axis_tree()
    new = replace_fine(tree, [(1, np.array([[0.6, 0.8, 0.0]], np.float32), np.array([[0.0, 3.0, 4.0]]))])
    np.testing.assert_allclose(new.leaves, [[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(new.coarse, [[1, 0, 0], [0, 0.6, 0.8], [0, 0, 1]], atol=1e-6)
    np.testing.assert_array_equal(new.parent, tree.parent)


# ------------------------------------------------------------------------------------------- prefiltered top-k


def subspace_data(n: int, dim: int, rank: int, seed: int) -> np.ndarray:
    """``n`` unit vectors of R^dim that all lie in one random ``rank``-dimensional subspace."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(dim, rank)))[0]
    return l2_normalize((rng.normal(size=(n, rank)) @ axes.T).astype(np.float32))


def tree_over(leaves: np.ndarray) -> Tree:
    return Tree.from_parts(leaves[:1].copy(), [leaves])


def test_prefilter_needs_fewer_axes_than_the_space() -> None:
    tree = tree_over(subspace_data(40, 16, 16, 0))
    assert Prefilter.of(tree, 0, 8) is None
    assert Prefilter.of(tree, 16, 8) is None
    assert Prefilter.of(tree_over(subspace_data(1, 16, 16, 0)), 4, 8) is None  # one leaf has no spread
    pre = Prefilter.of(tree, 5, 8)
    assert pre is not None and pre.basis.shape == (16, 5) and pre.dim == 5
    np.testing.assert_allclose(pre.basis.T @ pre.basis, np.eye(5), atol=1e-5)
    assert pre.cost(8, 16, 3) == 8 and pre.cost(32, 16, 3) == 32 * 5 / 16 + 8 and pre.cost(9, 16, 10) == 9


def test_prefilter_axes_span_the_centroids() -> None:
    leaves = subspace_data(50, 16, 3, 1)
    pre = Prefilter.of(tree_over(leaves), 3, 4)
    assert pre is not None
    centred = leaves - pre.mean
    np.testing.assert_allclose(centred @ pre.basis @ pre.basis.T, centred, atol=1e-5)


def test_prefiltered_top_k_is_exact_when_the_data_lies_in_the_axes() -> None:
    data = subspace_data(330, 16, 4, 2)  # leaves, keys and queries share one 4-dimensional subspace
    leaves, keys, queries = data[:30], data[30:300], data[300:]
    pre = Prefilter.of(tree_over(leaves), 4, shortlist=5)
    assert pre is not None
    idx, scores = top_k_prefiltered(queries, keys, 3, pre, rows_per_step=7)
    exact_idx, exact_scores = top_k_exact(queries, keys, 3)
    np.testing.assert_array_equal(idx, exact_idx)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)


def test_prefiltered_top_k_rescores_its_shortlist_exactly() -> None:
    rng = np.random.default_rng(3)
    keys = l2_normalize(rng.normal(size=(200, 16)).astype(np.float32))
    queries = l2_normalize(rng.normal(size=(9, 16)).astype(np.float32))
    pre = Prefilter.of(tree_over(keys[:40]), 2, shortlist=6)  # 2 of 16 axes: a poor shortlist on purpose
    assert pre is not None
    idx, scores = top_k_prefiltered(queries, keys, 3, pre)
    approx = (queries @ pre.basis) @ ((keys - pre.mean) @ pre.basis).T
    for q, row in enumerate(approx):
        short = np.argsort(-row, kind="stable")[:6]
        best = short[np.argsort(-(keys[short] @ queries[q]), kind="stable")[:3]]
        np.testing.assert_array_equal(idx[q], best)
        np.testing.assert_allclose(scores[q], keys[best] @ queries[q], atol=1e-6)
    few = keys[:5]  # no more keys than the shortlist: scored exactly
    np.testing.assert_array_equal(top_k_prefiltered(queries, few, 3, pre)[0], top_k_exact(queries, few, 3)[0])


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


def test_probe_counts_keep_the_leaves_within_the_margin() -> None:
    inf = np.float32(np.inf)
    scores = np.array(
        [
            [0.9, 0.85, 0.7, 0.5],  # within 0.1 of 0.9: two leaves
            [0.9, 0.1, 0.0, -0.2],  # one leaf within the margin, raised to lo = 2
            [0.3, 0.29, 0.28, 0.27],  # all four within the margin, cut to hi = 3
            [0.5, 0.45, -inf, -inf],  # only two leaves found: never more than that
        ],
        np.float32,
    )
    assert udfs.tree.probe_counts(scores, 0.1, 2, 3).tolist() == [2, 2, 3, 2]
    assert udfs.tree.probe_counts(scores, 0.1, 1, 4).tolist() == [2, 1, 4, 2]
    assert udfs.tree.probe_counts(scores, 0.0, 4, 4).tolist() == [4, 4, 4, 2]  # lo = hi: a fixed p
    assert udfs.tree.probe_counts(scores[:, :0], 0.1, 2, 3).tolist() == [0, 0, 0, 0]


def test_calibrated_margin_spends_the_mean_probe_budget() -> None:
    # gaps to the best leaf: row 0 0.2, 0.33; row 1 0.05, 0.52; row 2 0.41, 0.47
    scores = np.array([[0.9, 0.7, 0.57], [0.8, 0.75, 0.28], [0.6, 0.19, 0.13]], np.float32)
    # counts (lo 1, hi 3) as the margin grows: 0.05: 1,2,1; 0.2: 2,2,1; 0.33: 3,2,1; 0.41: 3,2,2; 0.47: 3,2,3
    margin = udfs.tree.calibrate_margin(scores, 2.0, 1, 3)  # the largest margin with at most 6 probes in all
    assert 0.33 - 1e-6 <= margin <= 0.41 + 1e-6  # float32 scores: breakpoints within rounding
    assert udfs.tree.probe_counts(scores, margin, 1, 3).tolist() == [3, 2, 1]
    margin = udfs.tree.calibrate_margin(scores, 4 / 3, 1, 3)
    assert 0.05 - 1e-6 <= margin <= 0.2 + 1e-6
    assert udfs.tree.probe_counts(scores, margin, 1, 3).tolist() == [1, 2, 1]
    # a budget below lo everywhere, or above what any margin reaches
    assert udfs.tree.calibrate_margin(scores, 0.5, 1, 3) == 0.0
    assert udfs.tree.probe_counts(scores, udfs.tree.calibrate_margin(scores, 9.0, 1, 3), 1, 3).tolist() == [3, 3, 3]
    assert udfs.tree.calibrate_margin(np.zeros((0, 3), np.float32), 2.0, 1, 3) == 0.0
    assert udfs.tree.calibrate_margin(scores, 2.0, 2, 2) == 0.0  # lo = hi: the margin changes nothing


# The torch path of the k-means kernels (what a GPU task runs): on the GPU where there is one, else on torch's CPU.
TORCH = "cuda:0" if torch.cuda.is_available() else "cpu"


def test_device_rows_agree_with_the_host_kernels() -> None:
    x, _ = planted([60, 40, 30], noise=0.3, seed=4)
    centroids = l2_normalize(np.random.default_rng(1).normal(size=(7, 16)))
    on_host, on_device = DeviceRows(x), DeviceRows(x, TORCH, chunk_rows=50)  # several chunks
    labels, scores = on_device.nearest(centroids)
    expected_labels, expected_scores = on_host.nearest(centroids)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    rows = np.array([3, 0, 77])
    np.testing.assert_allclose(on_device.dots(rows), on_host.dots(rows), atol=1e-6)
    labels[::3] = -1  # rows left out of the sums
    for a, b in zip(on_device.sums(labels), on_host.sums(labels), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert [a.size for a in on_device.sums(np.full(x.shape[0], -1))] == [0, 0, 0]
    assert on_device.nearest(np.zeros((0, 16), np.float32))[0].tolist() == [-1] * x.shape[0]


def test_device_rows_break_ties_to_the_lower_centroid() -> None:
    x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    centroids = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    labels, _ = DeviceRows(x, TORCH).nearest(centroids)
    assert labels.tolist() == [1, 0]


def test_local_refined_on_a_device_as_on_the_host() -> None:
    eye = np.eye(3, dtype=np.float32)
    x = l2_normalize(np.array([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, 1.0, 0.0]], np.float32))
    for competitor in (np.array([-np.inf, 0.95, -np.inf], np.float32), np.full(3, -np.inf, np.float32)):
        host = local_refined(x, eye, competitor, niter=5)
        device = local_refined(x, eye, competitor, niter=5, device=TORCH)
        for a, b in zip(host, device, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_kmeans_on_a_device_recovers_planted_clusters() -> None:
    for sizes, seed in (([120, 80, 60, 40, 20], 3), ([400, 40, 10], 0)):  # the seeds of the host tests above
        x, labels = planted(sizes)
        centroids = spherical_kmeans(x, len(sizes), seed=seed, device=TORCH)
        found, _ = assign(x, centroids)
        assert same_partition(found, labels)
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    x, labels = planted([200, 50, 20])
    resampled = spherical_kmeans(x, 3, seed=0, resampling_steps=2, resample_size=10, device=TORCH)
    assert same_partition(assign(x, resampled)[0], labels)
    # "random" init: k rows drawn with the seed, then Lloyd steps, which only lower the loss of those rows
    random_init = spherical_kmeans(x, 3, seed=0, init="random", niter=30, device=TORCH)
    assert same_partition(assign(x, random_init)[0], labels)
    drawn = x[np.sort(np.random.default_rng(0).choice(x.shape[0], 3, replace=False))]
    assert mean_cosine_distance(x, random_init) < mean_cosine_distance(x, drawn)


def test_kmeans_on_a_device_is_seeded_and_as_good_as_faiss() -> None:
    x, _ = planted([50] * 12, noise=0.5, seed=2)
    a = spherical_kmeans(x, 8, seed=7, device=TORCH)
    np.testing.assert_array_equal(a, spherical_kmeans(x, 8, seed=7, device=TORCH))
    # the same Lloyd objective as faiss's CPU build on the same seeds, within 2% of its loss
    faiss_loss = mean_cosine_distance(x, spherical_kmeans(x, 8, seed=7))
    assert mean_cosine_distance(x, a) <= faiss_loss * 1.02
    # a subsample of max_points_per_centroid rows per centroid, drawn with the seed
    small = spherical_kmeans(x, 8, seed=7, max_points_per_centroid=10, device=TORCH)
    assert small.shape == (8, 16) and not np.array_equal(small, a)


def test_kmeans_plus_plus_on_a_device_picks_the_host_seeds() -> None:
    x, labels = planted([300, 40, 10])
    seeds = kmeans_plus_plus(x, 3, seed=0, device=TORCH)
    np.testing.assert_array_equal(seeds, kmeans_plus_plus(x, 3, seed=0))
    assert same_partition(assign(x, seeds)[0], labels)


# The torch path of retrieval's kernels (udfs.tree with a device): the host's answers, ties included.


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


def test_descend_on_a_device_with_every_leaf_probed_is_a_full_sort() -> None:
    tree, _ = random_tree()
    q = l2_normalize(np.random.default_rng(5).normal(size=(300, 12)))
    leaves, scores, cost = descend(q, tree, tree.n_leaves, coarse_probe=6, max_cells=64 * 6 * 6, device=TORCH)
    expected = np.argsort(-(q @ tree.leaves.T), axis=1, kind="stable")
    np.testing.assert_array_equal(leaves, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ tree.leaves.T, expected, axis=1), atol=1e-6)
    np.testing.assert_array_equal(cost, 6 + tree.n_leaves)


def test_descend_on_a_device_finds_the_host_leaves() -> None:
    rng = np.random.default_rng(8)
    coarse = l2_normalize(rng.normal(size=(7, 12)))
    fine = [l2_normalize(rng.normal(size=(n, 12))) for n in (3, 0, 8, 1, 5, 0, 4)]  # two clusters with no leaves
    tree, q = Tree.from_parts(coarse, fine), l2_normalize(rng.normal(size=(500, 12)))
    for p, probe, cells in ((1, 1, None), (4, 3, 100), (12, 7, 1_000), (40, 7, None)):
        host = descend(q, tree, p, probe, max_cells=cells)
        device = descend(q, tree, p, probe, max_cells=cells, device=TORCH)
        np.testing.assert_array_equal(device[0], host[0])  # -1 padding where fewer leaves were seen
        np.testing.assert_allclose(device[1], host[1], atol=1e-6)
        np.testing.assert_array_equal(device[2], host[2])
    assert [a.shape for a in descend(q[:0], tree, 4, 3, device=TORCH)] == [(0, 4), (0, 4), (0,)]


def test_a_tree_crosses_to_the_device_once_per_process() -> None:
    tree, _ = random_tree()
    coarse, leaves = tree_on(tree, TORCH)
    again = tree_on(tree, TORCH)
    assert again[0] is coarse and again[1] is leaves  # the same tensors: not copied a second time
    np.testing.assert_array_equal(leaves.cpu().numpy(), tree.leaves)
    np.testing.assert_array_equal(coarse.cpu().numpy(), tree.coarse)
    others = [random_tree(seed)[0] for seed in (1, 2)]
    for other in others:
        tree_on(other, TORCH)
    assert tree_on(tree, TORCH)[1] is not leaves  # two newer trees pushed it out: copied again
    udfs.tree.tree_on(tree, "meta")  # the next task's device: the copies on this one are dropped
    assert {device for _, device in udfs.tree._TREES_ON} == {"meta"}


def test_top_k_on_a_device_is_the_host_top_k() -> None:
    keys = np.array([[1, 0], [0, 1], [-1, 0], [0.6, 0.8]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    idx, scores = top_k_prefiltered(queries, keys, 3, None, device=TORCH)  # the hand-worked case above
    np.testing.assert_array_equal(idx, [[0, 3, 1], [1, 3, 0]])
    np.testing.assert_allclose(scores, [[1.0, 0.6, 0.0], [1.0, 0.8, 0.0]], atol=1e-6)
    assert top_k_prefiltered(queries, keys[:2], 3, None, device=TORCH)[0].tolist() == [[0, 1], [1, 0]]
    data = subspace_data(330, 16, 4, 2)
    pre = Prefilter.of(tree_over(data[:30]), 4, shortlist=5)
    exact = top_k_exact(data[300:], data[30:300], 3)
    for prefilter in (None, pre):
        idx, scores = top_k_prefiltered(data[300:], data[30:300], 3, prefilter, rows_per_step=1, device=TORCH)
        np.testing.assert_array_equal(idx, exact[0])
        np.testing.assert_allclose(scores, exact[1], atol=1e-6)
    rng = np.random.default_rng(3)  # a poor shortlist: the host's shortlist and rescoring, step for step
    keys, queries = l2_normalize(rng.normal(size=(200, 16))), l2_normalize(rng.normal(size=(9, 16)))
    pre = Prefilter.of(tree_over(keys[:40]), 2, shortlist=6)
    host, device = top_k_prefiltered(queries, keys, 3, pre), top_k_prefiltered(queries, keys, 3, pre, device=TORCH)
    np.testing.assert_array_equal(device[0], host[0])
    np.testing.assert_allclose(device[1], host[1], atol=1e-6)
    assert [a.shape for a in top_k_prefiltered(queries[:0], keys, 3, pre, device=TORCH)] == [(0, 3), (0, 3)]
