"""Generate the demo corpus of demo.kind (generated or photos, both layouts) under demo.output."""

from __future__ import annotations

from realsyn.cli import job_parser, parse
from realsyn.demo_corpus import generate


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-demo-corpus --conf conf/local.yaml [--set demo.documents=100000]``."""
    cfg, _ = parse(job_parser(__doc__ or ""), argv)
    print(f"demo corpus at {generate(cfg.demo)}")


if __name__ == "__main__":
    main()
