"""For the tests of the vector kernels (udfs.vectors, udfs.tree, udfs.kmeans): the torch device their GPU paths
run on here, and a hand-made tree."""

from __future__ import annotations

import numpy as np
import torch

from udfs.tree import Tree

# The torch path of the kernels (what a GPU task runs): on the GPU where there is one, else on torch's CPU.
TORCH = "cuda:0" if torch.cuda.is_available() else "cpu"


def three_axis_tree() -> Tree:
    """Coarse clusters along the axes of R^3, each with one leaf on its axis."""
    eye = np.eye(3, dtype=np.float32)
    return Tree.from_parts(eye, [eye[[0]], eye[[1]], eye[[2]]])
