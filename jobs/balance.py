"""Semantic balance sampling: gold.dataset (kept pairs with their scales) and gold.dataset_rejects."""

from __future__ import annotations

from realsyn.balance import run_balance
from realsyn.cli import job_parser, parse
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-balance --conf conf/local.yaml [--set balance.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    print(run_balance(Lakehouse(get_spark(cfg.spark), cfg.storage), cfg))


if __name__ == "__main__":
    main()
