"""Synthetic text per image: captioner + tagger + LLM rewrite (or one VLM, generate.mode: vlm), then the image / text
similarity filter."""

from __future__ import annotations

from realsyn.cli import job_parser, parse, run_stage_job
from realsyn.stages.generate import resolve_models, run_generate


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic text, or a reject with its reason, for every image not yet done under the current key."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    resolve_models(cfg)  # a wrong model name, kind or path stops the job before Spark starts
    run_stage_job(cfg, "generate", lambda lakehouse: run_generate(lakehouse, cfg))


if __name__ == "__main__":
    main()
