"""The whole pipeline, documents to dataset: every stage in dependency order, resumable with --from."""

from __future__ import annotations

import sys

from realsyn.cli import job_parser, parse
from realsyn.config import ConfigError
from realsyn.lock import PipelineLocked
from realsyn.pipeline import (
    STAGE_NAMES,
    StageSelectionError,
    check_config,
    run_pipeline,
    select_stages,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``realsyn-pipeline --conf conf/local.yaml [--from STAGE] [--until STAGE] [--only STAGE ...]``."""
    parser = job_parser(__doc__ or "")
    stages = ", ".join(STAGE_NAMES)
    parser.add_argument("--from", dest="start", metavar="STAGE", help=f"start at this stage ({stages})")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")
    parser.add_argument("--only", action="append", default=[], metavar="STAGE", help="run only this stage (repeatable)")
    cfg, args = parse(parser, argv)
    try:
        selected = select_stages(args.start, args.until, args.only)
    except StageSelectionError as e:
        parser.error(str(e))
    try:
        check_config(cfg, selected)
    except ConfigError as e:
        print(f"config error: {e} ({args.conf})", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        summary = run_pipeline(cfg, selected)
    except PipelineLocked as e:
        print(f"realsyn-pipeline: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    if not summary.ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
