"""Hierarchical k-means of the image embeddings: silver.image_centroids and silver.image_clusters."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.clustering import run_cluster_images
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Cluster the image embeddings of one model and give every image its leaf."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    spark = get_spark(cfg.spark)
    print(run_cluster_images(Lakehouse(spark, cfg.storage), cfg))


if __name__ == "__main__":
    main()
