"""CLIP-embed silver.images and silver.sentences with the model named by embed.model (conf/models.yaml)."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.embed import run_embed


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-embed --conf conf/local.yaml [--set embed.model=eva02-l-14 ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "embed", lambda lakehouse: run_embed(lakehouse, cfg))


if __name__ == "__main__":
    main()
