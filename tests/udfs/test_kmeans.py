"""Spherical k-means and its refinement steps (udfs.kmeans), on planted and hand-worked data, on the host and
through torch."""

from __future__ import annotations

import numpy as np

from tests.support.kernels import TORCH, three_axis_tree
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
from udfs.tree import Tree, descend
from udfs.vectors import assign, l2_normalize, mean_cosine_distance


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


def test_no_rows_give_no_centroids() -> None:
    assert spherical_kmeans(np.zeros((0, 4), np.float32), 3).shape == (0, 4)


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


# The torch path of the k-means kernels (what a GPU task runs).


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
