"""Arguments every job shares: ``--conf conf/x.yaml`` and repeated ``--set section.key=value``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from realsyn.config import Config, ConfigError, load_config


def job_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the shared options; a job adds its own before calling :func:`parse`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--conf", default="conf/local.yaml", help="YAML config of the environment")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set ingest.max_text_chars=5000 (repeatable)",
    )
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    """Parse arguments and load the config; exit with status 2 and the message on bad config."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss logs each CPU-specific build it fails to find before loading the generic one.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return load_config(args.conf, args.overrides), args
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
