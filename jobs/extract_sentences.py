"""Sentence extraction: bronze.texts -> silver.sentences, silver.sentence_rejects and the stage's funnel rows."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.sentences import run_extract_sentences
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse


def main(argv: list[str] | None = None) -> None:
    """Split, filter and deduplicate the sentences of every ingested text."""
    cfg, _ = parse(job_parser(__doc__ or "extract sentences"), argv)
    spark = get_spark(cfg.spark)
    print(run_extract_sentences(Lakehouse(spark, cfg.storage), cfg))


if __name__ == "__main__":
    main()
