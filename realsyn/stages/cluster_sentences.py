"""Stage cluster_sentences: hierarchical k-means of the sentence embeddings of one model
(:mod:`realsyn.clustering`) into ``silver.sentence_centroids`` and ``silver.sentence_clusters``, the leaf of every
sentence (the tree retrieval descends); unusable embeddings go to ``silver.sentence_cluster_rejects``."""

from __future__ import annotations

from realsyn.clustering import ClusterSummary, Subject, run_cluster
from realsyn.config_sections import Config
from realsyn.tables import Lakehouse

STAGE = "cluster_sentences"
SENTENCES = Subject.of("sentence", STAGE)


def run_cluster_sentences(lakehouse: Lakehouse, cfg: Config) -> ClusterSummary:
    """Train (or reuse) the sentence tree of one model and give every sentence its leaf."""
    return run_cluster(lakehouse, cfg.cluster_sentences, SENTENCES)
