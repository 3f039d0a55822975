"""The dataset report: an HTML page with plots and sample pairs, written beside the tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.report import run_report


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-report --conf conf/local.yaml``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "report", lambda lakehouse: run_report(lakehouse, cfg))


if __name__ == "__main__":
    main()
