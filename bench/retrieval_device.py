"""Retrieval's kernels on a torch device against numpy on the host, same data, side by side (retrieve.device).

Each task of the retrieval stage runs two kernels: the descent of every image to its nearest leaves
(udfs.tree.descend, the probe step) and, per group of a leaf's images and sentences, the exact top-k by one
matrix product (udfs.tree.top_k_prefiltered, the scoring step). This times both over all images with numpy on the
host and with torch on ``--device`` (the GPU where there is one, else torch's CPU, which measures only what the
torch path costs on a CPU), each limited to ``--threads`` CPU threads (a Spark task owns one core), and checks
that the two return the same top-k lists.

The tree is drawn from the data rather than trained (the coarse centroids and the leaves are rows of the sentences,
each leaf under its nearest coarse centroid): the kernels' cost depends on the tree's shape (coarse clusters, leaves
per coarse cluster, sentences per leaf), which follows the stage's defaults (cluster_sentences.leaf_size, about
sqrt(leaves) coarse clusters), not on how good its centroids are. Recall is bench/retrieval.py's measure. The Spark
shuffle that brings each image to its leaves stays where it is whatever the device: bench/retrieval.py
measures how much of the stage's time the kernels are.

    python bench/retrieval_device.py            # 1M sentences x 100k images, dim 512 (bench/retrieval.py's size)
    python bench/retrieval_device.py --quick    # 200k x 10k

Last line: ``retrieval_device_speedup``, host seconds over device seconds of both kernels together.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import Descent, grouped_top_k, merged, synthetic

from realsyn.config_sections import ClusterConfig, RetrieveConfig
from udfs.tree import Tree, descend, nearest_leaf
from udfs.vectors import assign


def drawn_tree(s: np.ndarray, leaf_size: int, seed: int) -> Tree:
    """A tree of the stage's shape whose centroids are rows of ``s``: n / leaf_size leaves, about sqrt of that
    many coarse centroids, each leaf under its nearest coarse centroid."""
    rng = np.random.default_rng(seed)
    n_leaves = max(1, s.shape[0] // leaf_size)
    coarse = s[rng.choice(s.shape[0], max(1, round(math.sqrt(n_leaves))), replace=False)]
    leaves = s[rng.choice(s.shape[0], n_leaves, replace=False)]
    parent, _ = assign(leaves, coarse)
    return Tree.from_parts(coarse, [leaves[parent == c] for c in range(coarse.shape[0])])


def kernels(
    q: np.ndarray, s: np.ndarray, s_leaf: np.ndarray, tree: Tree, cfg: RetrieveConfig, device: str | None
) -> tuple[np.ndarray, float, float]:
    """Every image's top-k sentence rows, and the seconds of the descent and of the scoring, on ``device``."""
    t0 = time.perf_counter()
    descent = Descent(*descend(q, tree, cfg.probe_bounds[1], cfg.coarse_probe, device=device))
    t1 = time.perf_counter()
    counts = descent.probes(cfg.probe_leaves, cfg.probe_spread)
    leaves = np.where(np.arange(descent.leaves.shape[1]) < counts[:, None], descent.leaves, -1)
    top = merged(
        grouped_top_k(q, s, leaves, s_leaf, cfg.top_k, np.arange(q.shape[0]), device=device),
        counts,
        cfg.top_k,
        q.shape[0],
    )
    return top, t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k sentences x 10k images")
    ap.add_argument("--sentences", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--components", type=int, default=20_000, help="components of the synthetic mixture")
    ap.add_argument("--device", default="", help="torch device (default: cuda:0 where there is one, else cpu)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of numpy and torch (a Spark task: 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.sentences, args.images, args.components = 200_000, 10_000, 4_000
    import torch

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else "torch's CPU device (no GPU)"
    cfg = RetrieveConfig()
    ccfg = ClusterConfig()
    s, q, _ = synthetic(args.sentences, args.images, args.dim, args.components, seed=args.seed)
    tree = drawn_tree(s, ccfg.leaf_size, args.seed)
    s_leaf, _ = nearest_leaf(s, tree, ccfg.assign_coarse_probe)
    sizes = np.bincount(s_leaf, minlength=tree.n_leaves)
    print(
        f"{s.shape[0]:,} sentences x {q.shape[0]:,} images, dim {args.dim}; tree of {tree.coarse.shape[0]:,} coarse "
        f"clusters and {tree.n_leaves:,} leaves (sentences per leaf: median {int(np.median(sizes))}, max "
        f"{int(sizes.max())}); p = {cfg.probe_leaves} adaptive, coarse_probe {cfg.coarse_probe}, top {cfg.top_k}; "
        f"{args.threads} CPU thread(s); device {device}: {where}",
        flush=True,
    )
    with threadpool_limits(args.threads):
        torch.set_num_threads(args.threads)
        kernels(q[:256], s, s_leaf, tree, cfg, device)  # warm-up: CUDA context, kernels compiled, tree copied
        host, host_descend, host_score = kernels(q, s, s_leaf, tree, cfg, None)
        on_device, device_descend, device_score = kernels(q, s, s_leaf, tree, cfg, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    same = float(np.mean(np.all(host == on_device, axis=1)))
    for name, on_host, on_gpu in (("descent", host_descend, device_descend), ("scoring", host_score, device_score)):
        ms = 1000 / q.shape[0]
        print(
            f"{name:8} host {on_host:8.2f} s ({on_host * ms:.3f} ms/image)   "
            f"device {on_gpu:8.2f} s ({on_gpu * ms:.3f} ms/image)   x{on_host / on_gpu:.2f}"
        )
    print(f"top-{cfg.top_k} lists identical on host and device: {same:.2%} of {q.shape[0]:,} images")
    print(f"retrieval_device_speedup: {(host_descend + host_score) / (device_descend + device_score):.2f}")


if __name__ == "__main__":
    main()
