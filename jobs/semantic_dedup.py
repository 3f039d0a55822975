"""Remove semantic duplicates (embedding cosine within k-means clusters) from silver.images and silver.sentences."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.semantic_dedup import run_semantic_dedup


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-semantic-dedup --conf conf/local.yaml [--set semantic_dedup.images.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "semantic_dedup", lambda lakehouse: run_semantic_dedup(lakehouse, cfg))


if __name__ == "__main__":
    main()
