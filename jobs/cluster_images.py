"""Hierarchical k-means of the image embeddings: silver.image_centroids and silver.image_clusters."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.cluster_images import run_cluster_images


def main(argv: list[str] | None = None) -> None:
    """Cluster the image embeddings of one model and give every image its leaf."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "cluster_images", lambda lakehouse: run_cluster_images(lakehouse, cfg))


if __name__ == "__main__":
    main()
