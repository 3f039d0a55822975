"""The Spark session: reuse a running one (Databricks, EMR, notebooks, spark-submit), else build a local one."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from realsyn.config_sections import SparkConfig

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# Rows per Arrow batch a pandas / Arrow UDF receives (what a model batch is cut from).
ARROW_BATCH_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
# Warnings and errors of the driver JVM, with the logger's name (shipped with the package).
LOG4J2_PROPERTIES = Path(__file__).with_name("log4j2.properties")


def launched_by_spark_submit() -> bool:
    """True when this Python driver was started by spark-submit (the JVM and its classpath already exist)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@contextmanager
def _process_output_to(log: Path) -> Iterator[None]:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at ``log`` for the duration.

    A child started meanwhile (the Spark JVM, and through it the Python workers) keeps writing there: Ivy's
    resolution report, log4j's console and the workers' stderr end in the log, not on the terminal.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@contextmanager
def session_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set one SQL setting of ``spark`` for the duration (plans are made and run inside), then restore it."""
    conf = spark.conf
    before = conf.get(key, None)
    conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            conf.unset(key)
        else:
            conf.set(key, before)


def get_spark(cfg: SparkConfig, jvm_log: Path | None = None) -> SparkSession:
    """Return the active session, or build one with Delta enabled.

    A local build takes master and extra settings from ``cfg`` and Delta's jars from Maven Central
    (resolved once, then cached by Ivy). Under spark-submit the cluster decides master and jars. With
    ``jvm_log``, a local build sends everything the JVM writes to that file (log4j at warning level with the
    package's ``log4j2.properties``, Ivy's report) and draws no console progress bars.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    )
    conf = dict(cfg.conf)
    if jvm_log is not None:
        conf["spark.ui.showConsoleProgress"] = "false"
        java = f"-Dlog4j2.configurationFile={LOG4J2_PROPERTIES.as_uri()}"
        extra = conf.get("spark.driver.extraJavaOptions")
        conf["spark.driver.extraJavaOptions"] = f"{extra} {java}" if extra else java
    for key, value in conf.items():
        builder = builder.config(key, value)
    if not launched_by_spark_submit():
        # Local Python workers run this interpreter (the project's virtualenv), not whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(cfg.master)
        if cfg.delta_from_maven:
            from delta import configure_spark_with_delta_pip

            builder = configure_spark_with_delta_pip(builder)
    if jvm_log is None or launched_by_spark_submit():
        return builder.getOrCreate()
    with _process_output_to(jvm_log):
        return builder.getOrCreate()
