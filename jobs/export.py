"""Exports of gold.dataset: release parquet, WebDataset shards with sizes.json, Delta tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.export import run_export
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-export --conf conf/local.yaml [--scale NAME ...]``."""
    parser = job_parser(__doc__ or "")
    parser.add_argument(
        "--scale", dest="scales", action="append", default=None, help="export only this scale (repeatable; 'all')"
    )
    cfg, args = parse(parser, argv)
    print(run_export(Lakehouse(get_spark(cfg.spark), cfg.storage), cfg, scales=args.scales))


if __name__ == "__main__":
    main()
