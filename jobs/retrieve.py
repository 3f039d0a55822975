"""Top-k sentences per image by descending the sentence k-means tree: silver.retrieval."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.retrieve import run_retrieve


def main(argv: list[str] | None = None) -> None:
    """Retrieve the top-k sentences of every image of one model."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "retrieve", lambda lakehouse: run_retrieve(lakehouse, cfg))


if __name__ == "__main__":
    main()
