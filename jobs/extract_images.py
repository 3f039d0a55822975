"""Image extraction: quality filter, exact, perceptual and semantic dedup of the fetched images."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.images import run_extract_images
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-extract-images --conf conf/local.yaml [--set images.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    lakehouse = Lakehouse(get_spark(cfg.spark), cfg.storage)
    print(run_extract_images(lakehouse, cfg))


if __name__ == "__main__":
    main()
