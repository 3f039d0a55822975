"""Arguments every job shares: ``--conf conf/x.yaml`` and repeated ``--set section.key=value``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from realsyn.config import ConfigError, load_config
from realsyn.config_sections import Config
from realsyn.tables import Lakehouse

log = logging.getLogger(__name__)


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


def run_stage_job(cfg: Config, stage: str, run: Callable[[Lakehouse], object]) -> None:
    """Run one stage as a job of its own with the pipeline's console: a line that names the log, a progress bar of
    Spark tasks on a terminal, the stage's summary and its time; Spark's and Python's log go to
    ``<log dir>/<stage>-<time>.log`` (the pipeline's log folder, :func:`realsyn.console.log_dir`)."""
    from realsyn.console import SparkProgress, log_dir, logging_to
    from realsyn.spark import get_spark

    folder = log_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{stage}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.log"
    print(f"realsyn {stage}: log {log_file}", flush=True)
    start = time.monotonic()
    with logging_to(log_file):
        spark = get_spark(cfg.spark, jvm_log=log_file)
        spark.sparkContext.setLogLevel("WARN")
        log.info("stage %s started", stage)
        with SparkProgress(spark.sparkContext, stage, sys.stderr):
            summary = run(Lakehouse(spark, cfg.storage))
        log.info("stage %s done in %.1f s: %s", stage, time.monotonic() - start, summary)
    text = str(summary).strip()
    if text:
        print(text)
    print(f"realsyn {stage}: done in {time.monotonic() - start:.1f} s")
