"""Semantic balance sampling: gold.dataset (kept pairs with their scales) and gold.dataset_rejects."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.balance import run_balance


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-balance --conf conf/local.yaml [--set balance.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "balance", lambda lakehouse: run_balance(lakehouse, cfg))


if __name__ == "__main__":
    main()
