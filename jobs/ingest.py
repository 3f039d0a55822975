"""Ingest OBELICS / MMC4 dumps into the bronze Delta tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.ingest import run_ingest
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-ingest --conf conf/local.yaml [--set ingest.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    lakehouse = Lakehouse(get_spark(cfg.spark), cfg.storage)
    print(run_ingest(lakehouse, cfg))


if __name__ == "__main__":
    main()
