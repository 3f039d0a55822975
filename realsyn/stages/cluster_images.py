"""Stage cluster_images: hierarchical k-means of the image embeddings of one model
(:mod:`realsyn.clustering`) into ``silver.image_centroids`` and ``silver.image_clusters``, the leaf of every
image (the clusters balance sampling draws from); unusable embeddings go to ``silver.image_cluster_rejects``."""

from __future__ import annotations

from realsyn.clustering import ClusterSummary, Subject, run_cluster
from realsyn.config_sections import Config
from realsyn.tables import Lakehouse

STAGE = "cluster_images"
IMAGES = Subject.of("image", STAGE)


def run_cluster_images(lakehouse: Lakehouse, cfg: Config) -> ClusterSummary:
    """Train (or reuse) the image tree of one model and give every image its leaf."""
    return run_cluster(lakehouse, cfg.cluster_images, IMAGES)
