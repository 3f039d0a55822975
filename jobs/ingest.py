"""Ingest OBELICS / MMC4 dumps into the bronze Delta tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.ingest import run_ingest


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-ingest --conf conf/local.yaml [--set ingest.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "ingest", lambda lakehouse: run_ingest(lakehouse, cfg))


if __name__ == "__main__":
    main()
