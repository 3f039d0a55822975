"""Hierarchical k-means of the sentence embeddings: silver.sentence_centroids and silver.sentence_clusters."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.clustering import run_cluster_sentences
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Cluster the sentence embeddings of one model and give every sentence its leaf."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    spark = get_spark(cfg.spark)
    print(run_cluster_sentences(Lakehouse(spark, cfg.storage), cfg))


if __name__ == "__main__":
    main()
