"""Fetch the images of bronze.image_refs into bronze.fetched_images (one row per distinct URL, final status)."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.fetch import run_fetch_images
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-fetch-images --conf conf/local.yaml [--retry-failed] [--set fetch.key=value ...]``."""
    parser = job_parser(__doc__ or "")
    parser.add_argument(
        "--retry-failed", action="store_true", help="also refetch URLs whose failure was transient (replaced in place)"
    )
    cfg, args = parse(parser, argv)
    lakehouse = Lakehouse(get_spark(cfg.spark), cfg.storage)
    print(run_fetch_images(lakehouse, cfg, retry_failed=args.retry_failed))


if __name__ == "__main__":
    main()
