"""Synthetic text per image: captioner + tagger + LLM rewrite, then the image / text similarity filter."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.generate import resolve_models, run_generate
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic text, or a reject with its reason, for every image not yet done under the current key."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    resolve_models(cfg)  # a wrong model name, kind or path stops the job before Spark starts
    spark = get_spark(cfg.spark)
    print(run_generate(Lakehouse(spark, cfg.storage), cfg))


if __name__ == "__main__":
    main()
