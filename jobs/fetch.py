"""Fetch the images of bronze.image_refs into bronze.fetched_images (one row per distinct URL, final status)."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.fetch import run_fetch


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-fetch --conf conf/local.yaml [--retry-failed] [--set fetch.key=value ...]``."""
    parser = job_parser(__doc__ or "")
    parser.add_argument(
        "--retry-failed", action="store_true", help="also refetch URLs whose failure was transient (replaced in place)"
    )
    cfg, args = parse(parser, argv)
    run_stage_job(cfg, "fetch", lambda lakehouse: run_fetch(lakehouse, cfg, retry_failed=args.retry_failed))


if __name__ == "__main__":
    main()
