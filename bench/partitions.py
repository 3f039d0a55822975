"""Recall per dot product of other sentence partitions, against the tree retrieval uses, at equal scan budgets.

Question: would a different way of placing sentences into leaves buy recall at the same share of brute-force
dot products? Same synthetic data as bench/retrieval.py (smaller: 200k sentences, 2,000 images, dim 256,
leaves of ~84 so that 2,382 leaves partition it as 2,375 partition the 1M set). Each image ranks leaves
(descending the tree; for flat k-means, scoring every centroid) and scans leaves in that order until
``budget`` x N sentences have been scanned; its recall@3 is the share of its exact top 3 (faiss IndexFlatIP)
lying in a scanned leaf, which equals the recall of an exact top-3 over the scanned sentences. Variants:

- tree: realsyn's hierarchical k-means with the clustering defaults (two boundary passes), every sentence in its
  nearest leaf under its ``assign_coarse_probe`` nearest coarse clusters, as the stage assigns it;
- tree + second leaf: every sentence also in the nearest other leaf (naive spilling: leaves twice as full);
- tree + SOAR: the second leaf minimises ||x - c||^2 + lambda <r, x - c>^2 over the next 15 leaves, r the unit
  residual of x to its first leaf (Sun et al., NeurIPS 2023, as in ScaNN), lambda 1;
- flat k-means: faiss spherical k-means with as many centroids as the tree has leaves, all ranked per image.

Budgets count scanned sentences only (spilled copies included); the descent is the same for the tree variants.
The last line is ``soar_recall_gain_at_2pct: <recall of tree + SOAR minus recall of the tree, at 2%>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import stage_tree, synthetic

from realsyn.config_sections import ClusterConfig
from udfs.tree import descend
from udfs.vectors import top_p

BUDGETS = (0.01, 0.02, 0.04)


def recall_at_budgets(
    ranked: np.ndarray, sizes: np.ndarray, homes: list[np.ndarray], exact: np.ndarray, n: int
) -> list[float]:
    """Recall@k per budget: ``ranked`` (queries, P) leaves in probe order, ``homes`` the leaf (-1: none) of each
    sentence per copy, ``exact`` (queries, k) true neighbours."""
    cums = np.cumsum(sizes[ranked], axis=1)
    out = []
    for budget in BUDGETS:
        probes = (cums < budget * n).sum(axis=1) + 1
        scanned = np.where(np.arange(ranked.shape[1])[None, :] < probes[:, None], ranked, -2)
        found = np.zeros(exact.shape, bool)
        for home in homes:
            found |= (home[exact][:, :, None] == scanned[:, None, :]).any(axis=-1)
        out.append(float(found.mean()))
    return out


def soar_second_leaf(s: np.ndarray, leaves: np.ndarray, candidates: np.ndarray, lam: float) -> np.ndarray:
    """SOAR's spill leaf per row: argmin over ``candidates[:, 1:]`` of ||x - c||^2 + lam <r, x - c>^2."""
    first = leaves[candidates[:, 0]]
    r = s - first
    r /= np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    out = np.empty(s.shape[0], np.int64)
    step = 8_192
    for a in range(0, s.shape[0], step):
        cand = candidates[a : a + step, 1:]
        diff = s[a : a + step, None, :] - leaves[np.maximum(cand, 0)]
        loss = (diff**2).sum(-1) + lam * np.einsum("nd,nmd->nm", r[a : a + step], diff) ** 2
        loss[cand < 0] = np.inf
        out[a : a + step] = cand[np.arange(cand.shape[0]), loss.argmin(axis=1)]
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50k sentences, 1,000 images, dim 128")
    ap.add_argument("--sentences", type=int, default=200_000)
    ap.add_argument("--images", type=int, default=2_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--components", type=int, default=20_000)
    ap.add_argument("--leaf-size", type=int, default=84)
    ap.add_argument("--lam", type=float, default=1.0, help="SOAR's lambda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.sentences, args.images, args.dim, args.components, args.leaf_size = 50_000, 1_000, 128, 5_000, 84
    import faiss

    faiss.omp_set_num_threads(1)  # see bench/retrieval.py: OpenMP spinning on a shared 2-core machine
    n = args.sentences
    s, q, _ = synthetic(n, args.images, args.dim, args.components, args.seed)
    index = faiss.IndexFlatIP(args.dim)
    index.add(s)
    exact = index.search(q, 3)[1]

    t = time.perf_counter()
    ccfg = ClusterConfig(leaf_size=args.leaf_size, seed=args.seed)
    tree = stage_tree(s, ccfg)
    n_leaves = tree.n_leaves
    near = descend(s, tree, 16, ccfg.assign_coarse_probe)[0]  # each sentence's 16 nearest leaves (its own first)
    ranked = descend(q, tree, min(n_leaves, 600), 16)[0]
    print(
        f"{n} sentences x {args.images} images, dim {args.dim}; tree of {n_leaves} leaves in "
        f"{time.perf_counter() - t:.0f} s"
    )
    first = near[:, 0]
    results: dict[str, list[float]] = {}

    def run(name: str, homes: list[np.ndarray], order: np.ndarray) -> None:
        sizes = sum(np.bincount(h[h >= 0], minlength=n_leaves) for h in homes)
        results[name] = recall_at_budgets(order, np.asarray(sizes), homes, exact, n)

    run("tree", [first], ranked)
    run("tree + second leaf", [first, near[:, 1]], ranked)
    run(f"tree + SOAR (lambda {args.lam:g})", [first, soar_second_leaf(s, tree.leaves, near, args.lam)], ranked)
    t = time.perf_counter()
    km = faiss.Kmeans(args.dim, n_leaves, niter=20, seed=args.seed, spherical=True, max_points_per_centroid=256)
    km.train(s)
    centroids = np.asarray(km.centroids, np.float32)
    flat_home = top_p(s, centroids, 1)[0][:, 0]
    print(f"flat k-means ({n_leaves} centroids) in {time.perf_counter() - t:.0f} s")
    run("flat k-means", [flat_home], top_p(q, centroids, min(n_leaves, 600))[0])

    print("recall@3 at a share of sentences scanned: " + "  ".join(f"{b:.0%}" for b in BUDGETS))
    for name, values in results.items():
        print(f"  {name:26s} " + "  ".join(f"{v:.3f}" for v in values))
    soar = results[f"tree + SOAR (lambda {args.lam:g})"][BUDGETS.index(0.02)]
    print(f"soar_recall_gain_at_2pct: {soar - results['tree'][BUDGETS.index(0.02)]:+.3f}")


if __name__ == "__main__":
    main()
