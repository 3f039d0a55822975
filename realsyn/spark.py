"""The Spark session: reuse a running one (Databricks, EMR, notebooks, spark-submit), else build a local one."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

from realsyn.config import SparkConfig

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def launched_by_spark_submit() -> bool:
    """True when this Python driver was started by spark-submit (the JVM and its classpath already exist)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Return the active session, or build one with Delta enabled.

    A local build takes master and extra settings from ``cfg`` and Delta's jars from Maven Central
    (resolved once, then cached by Ivy). Under spark-submit the cluster decides master and jars.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = (
        SparkSession.builder.appName(cfg.app_name)
        .config("spark.sql.extensions", DELTA_EXTENSION)
        .config("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    )
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    if not launched_by_spark_submit():
        # Local Python workers run this interpreter (the project's virtualenv), not whatever is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(cfg.master)
        if cfg.delta_from_maven:
            from delta import configure_spark_with_delta_pip

            builder = configure_spark_with_delta_pip(builder)
    return builder.getOrCreate()
