"""The two-level k-means tree and the search over it (udfs.tree): descent, nearest leaves, boundary rows, probe
margins and prefiltered top-k, on planted and hand-worked data, on the host and through torch."""

from __future__ import annotations

import numpy as np

import udfs.tree
from tests.support.kernels import TORCH, three_axis_tree
from udfs.kmeans import spherical_kmeans
from udfs.tree import Prefilter, Tree, boundary_rows, descend, nearest_leaf, top_k_prefiltered, tree_on
from udfs.vectors import assign, l2_normalize, top_k_exact


def random_tree(seed: int = 0) -> tuple[Tree, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = l2_normalize(rng.normal(size=(2_000, 12)))
    coarse = spherical_kmeans(x, 6, seed=seed)
    labels, _ = assign(x, coarse)
    fine = [spherical_kmeans(x[labels == c], 1 + c, seed=seed) for c in range(6)]  # uneven fan-out
    return Tree.from_parts(coarse, fine), x


def test_tree_offsets_and_parents() -> None:
    coarse = np.eye(3, dtype=np.float32)
    fine = [np.eye(3, dtype=np.float32)[:2], np.zeros((0, 3), np.float32), np.eye(3, dtype=np.float32)[2:]]
    tree = Tree.from_parts(coarse, fine)
    np.testing.assert_array_equal(tree.parent, [0, 0, 2])
    np.testing.assert_array_equal(tree.offsets, [0, 2, 2, 3])


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


def test_boundary_rows_join_the_clusters_within_the_margin_with_their_best_elsewhere() -> None:
    x = np.array([[0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], np.float32)  # leaf scores (0.8, 0.6, 0) and (0, 0, 1)
    rows, owner, competitor = boundary_rows(x, three_axis_tree(), coarse_probe=3, margin=0.25)
    assert list(zip(rows.tolist(), owner.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 2)]
    np.testing.assert_allclose(competitor, [0.6, 0.8, 0.0])
    rows, owner, _ = boundary_rows(x, three_axis_tree(), coarse_probe=3, margin=0.1)
    assert list(zip(rows.tolist(), owner.tolist(), strict=True)) == [(0, 0), (1, 2)]
    rows, owner, competitor = boundary_rows(x, three_axis_tree(), coarse_probe=1, margin=1.0)
    assert (rows.tolist(), owner.tolist(), competitor.tolist()) == ([0, 1], [0, 2], [-np.inf, -np.inf])


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


# The torch path of the descent and the scoring (udfs.tree with a device): the host's answers, ties included.


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
    idx, scores = top_k_prefiltered(queries, keys, 3, None, device=TORCH)  # test_vectors.py, test_top_k_exact_by_hand
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
