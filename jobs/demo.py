"""The whole pipeline on the embedded demo corpus: what `make run` does."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.clustering import run_cluster_images, run_cluster_sentences
from realsyn.demo_corpus import generate, with_demo_inputs
from realsyn.embed import run_embed
from realsyn.fetch import run_fetch_images
from realsyn.generate import run_generate
from realsyn.images import run_extract_images
from realsyn.ingest import run_ingest
from realsyn.retrieval import run_retrieve
from realsyn.sentences import run_extract_sentences
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m jobs.demo --conf conf/local.yaml``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    print(f"demo corpus at {generate(cfg.demo)}")
    cfg = with_demo_inputs(cfg)
    lakehouse = Lakehouse(get_spark(cfg.spark), cfg.storage)
    # Ingest and fetch return a one-line summary; the later stages print their own funnel and counts.
    print(run_ingest(lakehouse, cfg))
    print(run_fetch_images(lakehouse, cfg))
    run_extract_images(lakehouse, cfg)
    run_extract_sentences(lakehouse, cfg)
    run_embed(lakehouse, cfg)
    run_cluster_sentences(lakehouse, cfg)
    run_retrieve(lakehouse, cfg)
    run_cluster_images(lakehouse, cfg)
    print(run_generate(lakehouse, cfg))


if __name__ == "__main__":
    main()
