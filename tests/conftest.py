"""Shared fixtures: one local Spark + Delta session for the whole run, a fresh lakehouse per test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from realsyn.config_sections import SparkConfig, StorageConfig
from realsyn.spark import get_spark
from realsyn.tables import Lakehouse

# The GCS emulator of the gs:// tests speaks only the JSON API; gcsfs's default filesystem would first ask the
# gRPC storage-control API for each bucket's layout and wait a minute for the emulator to answer.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("REALSYN_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config: pytest.Config) -> None:
    """With ``-n`` (pytest-xdist), resolve Delta's jars in the controller before the workers start: each worker
    starts Spark on its own, and two Ivy resolutions into an empty cache at once would download the same files."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", default=None):
        return
    jar = f"io.delta_delta-spark_2.13-{version('delta-spark')}.jar"
    if any(Path.home().glob(f".ivy2*/jars/{jar}")):
        return
    # Named from the imports above, so that a class moved to another module cannot break the string unseen.
    start = (
        f"from {SparkConfig.__module__} import SparkConfig as C; from {get_spark.__module__} import get_spark; "
        "get_spark(C()).stop()"
    )
    subprocess.run([sys.executable, "-c", start], cwd=REPO, check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """A local[2] Spark session with Delta, UI off and few shuffle partitions."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    session = get_spark(
        SparkConfig(
            master="local[2]",
            app_name="realsyn-tests",
            conf={
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": "4",
                "spark.default.parallelism": "4",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.driver.memory": "3g",
                "spark.sql.session.timeZone": "UTC",
                "spark.databricks.delta.snapshotPartitions": "2",
            },
        )
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def storage(tmp_path: Path) -> StorageConfig:
    """Storage rooted in a fresh temporary folder."""
    return StorageConfig(root=str(tmp_path / "lakehouse"))


@pytest.fixture
def lakehouse(spark: SparkSession, storage: StorageConfig) -> Lakehouse:
    """A Lakehouse over a fresh temporary folder."""
    return Lakehouse(spark, storage)


@pytest.fixture(scope="session")
def mmc4_path() -> Path:
    """The 107 real MMC4 documents of ../shared/data/mmc4; the test is skipped where they are absent."""
    path = SHARED_DATA / "mmc4" / "docs_no_face_shard_151_v3.partial.jsonl"
    if not path.exists():
        pytest.skip(f"real MMC4 sample not found at {path}")
    return path
