"""Sentence extraction: bronze.texts -> silver.sentences, silver.sentence_rejects and the stage's funnel rows."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.extract_sentences import run_extract_sentences


def main(argv: list[str] | None = None) -> None:
    """Split, filter and deduplicate the sentences of every ingested text."""
    cfg, _ = parse(job_parser(__doc__ or "extract sentences"), argv)
    run_stage_job(cfg, "extract_sentences", lambda lakehouse: run_extract_sentences(lakehouse, cfg))


if __name__ == "__main__":
    main()
