"""The dataset report: an HTML page with plots and sample pairs, written beside the tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.report import run_report
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-report --conf conf/local.yaml``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    print(run_report(Lakehouse(get_spark(cfg.spark), cfg.storage), cfg))


if __name__ == "__main__":
    main()
