"""Hierarchical k-means of the sentence embeddings: silver.sentence_centroids and silver.sentence_clusters."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.cluster_sentences import run_cluster_sentences


def main(argv: list[str] | None = None) -> None:
    """Cluster the sentence embeddings of one model and give every sentence its leaf."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "cluster_sentences", lambda lakehouse: run_cluster_sentences(lakehouse, cfg))


if __name__ == "__main__":
    main()
