"""Top-k sentences per image by descending the sentence k-means tree: silver.retrieval."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.retrieval import run_retrieve
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Retrieve the top-k sentences of every image of one model."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    spark = get_spark(cfg.spark)
    print(run_retrieve(Lakehouse(spark, cfg.storage), cfg))


if __name__ == "__main__":
    main()
