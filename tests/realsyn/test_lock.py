"""The lock against a second pipeline on the same tables: a file in local folders, an object on S3 (an S3 API on
loopback: moto's server, which honours If-None-Match and If-Match as S3 does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from realsyn.config_sections import StorageConfig
from realsyn.lock import PipelineLock, PipelineLocked, S3PipelineLock, lock_path, lock_url, pipeline_lock

REPO = Path(__file__).resolve().parents[2]


def test_lock_paths_live_in_the_storage_location(tmp_path: Path) -> None:
    assert lock_path(StorageConfig(root=str(tmp_path))) == tmp_path / "_pipeline.lock"
    assert lock_path(StorageConfig(root="dbfs:/mnt/realsyn")) == Path("/dbfs/mnt/realsyn/_pipeline.lock")
    assert lock_path(StorageConfig(root="s3://bucket/realsyn")) is None
    assert lock_url(StorageConfig(root="s3a://bucket/realsyn/")) == "s3://bucket/realsyn/_pipeline.lock"
    assert lock_url(StorageConfig(root=str(tmp_path))) is None
    assert isinstance(pipeline_lock(StorageConfig(root="s3://bucket/realsyn"), "r", 10, 120), S3PipelineLock)
    assert isinstance(pipeline_lock(StorageConfig(root=str(tmp_path)), "r", 10, 120), PipelineLock)
    assert pipeline_lock(StorageConfig(catalog="main.realsyn"), "r", 10, 120) is None
    assert pipeline_lock(StorageConfig(root="gs://bucket/realsyn"), "r", 10, 120) is None


def test_a_held_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / "lake" / "_pipeline.lock"
    first = PipelineLock(path, "run-1", heartbeat_s=0.05, stale_after_s=60)
    with first:
        holder = json.loads(path.read_text())
        assert (holder["run_id"], holder["pid"]) == ("run-1", os.getpid())
        time.sleep(0.2)  # the heartbeat moves on
        assert json.loads(path.read_text())["heartbeat"] > holder["heartbeat"]
        with pytest.raises(PipelineLocked, match=f"run run-1, pid {os.getpid()} on host .*lock {path}"):
            PipelineLock(path, "run-2").acquire()
    assert not path.exists()
    with PipelineLock(path, "run-3") as third:
        assert third.took_over is None


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "_pipeline.lock"
    holder = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from realsyn.lock import PipelineLock
        PipelineLock(Path({str(path)!r}), "killed-run").acquire()
        print("held", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(PipelineLocked, match="run killed-run"):
            PipelineLock(path, "second").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = PipelineLock(path, "after-crash")
    lock.acquire()
    assert lock.took_over is not None and lock.took_over["run_id"] == "killed-run"
    assert json.loads(path.read_text())["run_id"] == "after-crash"
    lock.release()


def test_a_lock_with_an_old_heartbeat_from_another_host_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "_pipeline.lock"
    old = {"run_id": "lost", "pid": 1, "host": "another-host", "started": 0, "heartbeat": time.time() - 300}
    path.write_text(json.dumps(old))
    with pytest.raises(PipelineLocked, match="run lost"):
        PipelineLock(path, "x", stale_after_s=600).acquire()
    with PipelineLock(path, "y", stale_after_s=120) as lock:
        assert lock.took_over == old
    # A torn lock file (a crash while writing it) is judged by its age.
    path.write_text('{"run_id": "to')
    with pytest.raises(PipelineLocked):
        PipelineLock(path, "z", stale_after_s=120).acquire()


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An s3fs filesystem on a loopback S3 API with an empty bucket "lake" (moto's state is per process)."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = s3fs.S3FileSystem(endpoint_url=f"http://{host}:{port}", skip_instance_cache=True)
    if fs.exists("lake"):
        fs.rm("lake", recursive=True)
    fs.mkdir("lake")
    yield fs
    server.stop()


URL = "s3://lake/realsyn/_pipeline.lock"


def test_an_s3_lock_refuses_a_second_holder_and_is_released(s3: Any) -> None:
    first = S3PipelineLock(URL, "run-1", heartbeat_s=0.05, stale_after_s=60, fs=s3)
    with first:
        holder = json.loads(s3.cat_file(URL))
        assert (holder["run_id"], holder["pid"]) == ("run-1", os.getpid())
        time.sleep(0.3)  # the heartbeat moves on, each write conditional on the last
        assert json.loads(s3.cat_file(URL))["heartbeat"] > holder["heartbeat"]
        with pytest.raises(PipelineLocked, match=f"run run-1, pid {os.getpid()} on host .*lock {URL}"):
            S3PipelineLock(URL, "run-2", fs=s3).acquire()
    assert not s3.exists(URL)
    with S3PipelineLock(URL, "run-3", fs=s3) as third:
        assert third.took_over is None


def test_a_stale_s3_lock_is_taken_over_by_one_pipeline_only(s3: Any) -> None:
    old = {"run_id": "lost", "pid": 1, "host": "another-host", "started": 0, "heartbeat": time.time() - 300}
    s3.pipe_file(URL, json.dumps(old).encode())
    with pytest.raises(PipelineLocked, match="run lost"):
        S3PipelineLock(URL, "x", stale_after_s=600, fs=s3).acquire()
    # Two pipelines read the same stale lock; the first to write it wins, the second's write (conditional on the
    # stale lock's ETag) is refused, and reading again it finds a live holder.
    late = S3PipelineLock(URL, "late", stale_after_s=120, fs=s3)
    seen = late.read()
    assert seen is not None and seen[0] == old
    with S3PipelineLock(URL, "first", stale_after_s=120, fs=s3) as winner:
        assert winner.took_over == old
        assert not late._put(time.time(), IfMatch=seen[1])
        with pytest.raises(PipelineLocked, match="run first"):
            late.acquire()
    # A torn lock object is judged by its age (none: stale at once).
    s3.pipe_file(URL, b'{"run_id": "to')
    with S3PipelineLock(URL, "z", stale_after_s=120, fs=s3) as lock:
        assert lock.took_over == {"heartbeat": 0.0}


def test_a_heartbeat_stops_once_another_run_holds_the_lock(s3: Any, caplog: pytest.LogCaptureFixture) -> None:
    lock = S3PipelineLock(URL, "slow", heartbeat_s=0.05, stale_after_s=60, fs=s3)
    lock.acquire()
    s3.pipe_file(URL, json.dumps({"run_id": "other", "heartbeat": time.time()}).encode())
    time.sleep(0.3)
    assert json.loads(s3.cat_file(URL))["run_id"] == "other"  # its beats were refused, not written over
    assert "was taken by another run" in caplog.text
    lock.release()
    assert s3.exists(URL)  # not this run's to delete
