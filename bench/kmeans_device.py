"""k-means on a torch device (``cluster_sentences.device``: udfs.kmeans.DeviceRows) versus faiss on one CPU core,
same data.

What one clustering task does: train the leaves of one coarse cluster (about ``max_points_per_centroid`` rows
per leaf, here all ``--rows`` rows) and run a boundary pass's Lloyd steps over them. Side by side in one process,
on synthetic clustered embeddings (the generator of bench/retrieval.py):

- ``spherical_kmeans``: faiss with one OpenMP thread (as in a Spark task that owns one core) against the device
  path (the same k-means++ seeding, then up to ``niter`` Lloyd steps on ``--device``);
- ``local_refined`` (a boundary pass, every row free to move): numpy on the host against the device, both
  starting from faiss's centroids.

Each reports its seconds and the mean cosine distance of the rows to their centroid (lower is better). Without a
GPU, ``--device cpu`` runs the torch path on the CPU with one thread: that measures what the path costs there,
not what a GPU gains. The CPU side gets one thread (numpy's BLAS, faiss, torch), as a task that owns one core.
The last line is ``kmeans_device_speedup: <faiss seconds / device seconds>`` of
``spherical_kmeans``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval import synthetic

from udfs.kmeans import local_refined, spherical_kmeans
from udfs.vectors import mean_cosine_distance

T = TypeVar("T")


def timed(run: Callable[[], T]) -> tuple[float, T]:
    """Seconds and result of ``run()``; results are numpy arrays, so device work has finished."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; see the module docstring."""
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20,480 rows, 80 leaves, dim 128")
    ap.add_argument("--rows", type=int, default=102_400, help="rows of the coarse cluster (256 per leaf)")
    ap.add_argument("--k", type=int, default=400, help="leaves trained")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.k, args.dim = 20_480, 80, 128
    torch.set_num_threads(1)
    threadpool_limits(1)  # numpy's BLAS and faiss's OpenMP: one thread, as a task that owns one core
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU, one torch thread"

    k, niter, seed, device = args.k, args.niter, args.seed, args.device
    x, _, _ = synthetic(args.rows, 1, args.dim, 2 * k, seed)
    warm = x[: 50 * 8]
    # untimed warm-up of both sides: device start-up (CUDA context, kernels), faiss, scipy's sparse sums
    warm_c = spherical_kmeans(warm, 8, niter=2, threads=1)
    spherical_kmeans(warm, 8, niter=2, device=device)
    for on in (None, device):
        local_refined(warm, warm_c, np.full(warm.shape[0], -np.inf, np.float32), 2, device=on)
    faiss_s, faiss_c = timed(lambda: spherical_kmeans(x, k, niter=niter, seed=seed, threads=1))
    device_s, device_c = timed(lambda: spherical_kmeans(x, k, niter=niter, seed=seed, device=device))
    free = np.full(x.shape[0], -np.inf, np.float32)
    host_s, (host_l, _, _) = timed(lambda: local_refined(x, faiss_c, free, niter))
    pass_s, (pass_l, _, _) = timed(lambda: local_refined(x, faiss_c, free, niter, device=device))

    def loss(centroids: np.ndarray) -> str:
        return f"mean cosine distance {mean_cosine_distance(x, centroids):.4f}"

    print(f"data: {args.rows} rows, dim {args.dim}, {k} leaves, {niter} Lloyd steps; device {device} ({name})")
    print("  spherical_kmeans")
    print(f"    faiss, one CPU thread: {faiss_s:8.2f} s   {loss(faiss_c)}")
    print(f"    {device:21}: {device_s:8.2f} s   {loss(device_c)}")
    print("  local_refined (a boundary pass from faiss's centroids)")
    print(f"    numpy on the host:     {host_s:8.2f} s   {loss(host_l)}")
    print(f"    {device:21}: {pass_s:8.2f} s   {loss(pass_l)}")
    print(f"local_refined_device_speedup: {host_s / pass_s:.2f}")
    print(f"kmeans_device_speedup: {faiss_s / device_s:.2f}")


if __name__ == "__main__":
    main()
