"""Exports of gold.dataset: release parquet, WebDataset shards with sizes.json, Delta tables."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.export import run_export


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-export --conf conf/local.yaml [--scale NAME ...]``."""
    parser = job_parser(__doc__ or "")
    parser.add_argument(
        "--scale", dest="scales", action="append", default=None, help="export only this scale (repeatable; 'all')"
    )
    cfg, args = parse(parser, argv)
    run_stage_job(cfg, "export", lambda lakehouse: run_export(lakehouse, cfg, scales=args.scales))


if __name__ == "__main__":
    main()
