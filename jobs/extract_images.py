"""Image extraction: quality filter, exact, perceptual and semantic dedup of the fetched images."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.extract_images import run_extract_images


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-extract-images --conf conf/local.yaml [--set extract_images.key=value ...]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    run_stage_job(cfg, "extract_images", lambda lakehouse: run_extract_images(lakehouse, cfg))


if __name__ == "__main__":
    main()
