"""The lock against a second pipeline on the same tables, held in the storage location while a run lasts.

A lock names its holder (run id, pid, host, start and heartbeat times) and is taken over when its holder is gone:
it ran on this host and its process has exited, or its heartbeat is older than ``stale_after_s`` (a crash, a
kill, a lost machine). Two kinds, with the same rules:

- :class:`PipelineLock`, a file: local folders and DBFS (``<root>/_pipeline.lock``), created with ``O_EXCL`` and
  moved aside atomically when taken over;
- :class:`S3PipelineLock`, an object on S3 (``s3://`` and ``s3a://`` roots) through s3fs (the ``s3`` extra),
  made exclusive with S3's conditional writes: created with ``If-None-Match: *``, and its heartbeat and a takeover
  written with ``If-Match`` on the ETag last read, so that of two pipelines taking one lock at once only one
  succeeds. Credentials and endpoint are found as s3fs finds them (the environment, fsspec's config such as
  ``FSSPEC_S3_ENDPOINT_URL``, the instance profile).

Other roots (other object stores, a metastore catalog) have no lock (:func:`pipeline_lock` returns None).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from realsyn.config_sections import StorageConfig

log = logging.getLogger(__name__)

LOCK_FILE = "_pipeline.lock"


class PipelineLocked(RuntimeError):
    """Another pipeline holds the lock of this storage location."""


def lock_path(storage: StorageConfig) -> Path | None:
    """The lock file of a storage location: ``<root>/_pipeline.lock`` for a local or ``dbfs:/`` root, else None."""
    root = storage.root
    if root is None:
        return None
    if root.startswith("dbfs:"):
        return Path("/dbfs") / root.removeprefix("dbfs:").lstrip("/") / LOCK_FILE
    if "://" in root:
        return Path(root.removeprefix("file://")) / LOCK_FILE if root.startswith("file://") else None
    return Path(root) / LOCK_FILE


def lock_url(storage: StorageConfig) -> str | None:
    """The lock object of an ``s3://`` or ``s3a://`` root (``s3://<bucket>/<prefix>/_pipeline.lock``), else None."""
    root = storage.root
    if root is None or not root.startswith(("s3://", "s3a://")):
        return None
    return f"s3://{root.split('://', 1)[1].rstrip('/')}/{LOCK_FILE}"


def pipeline_lock(storage: StorageConfig, run_id: str, heartbeat_s: float, stale_after_s: float) -> Lock | None:
    """The lock a run on ``storage`` takes, or None where the root has none (see the module docstring)."""
    path = lock_path(storage)
    if path is not None:
        return PipelineLock(path, run_id, heartbeat_s, stale_after_s)
    url = lock_url(storage)
    if url is not None:
        return S3PipelineLock(url, run_id, heartbeat_s, stale_after_s)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class Lock:
    """What both kinds of lock share: the holder's record, when it is stale, the refusal, the heartbeat thread."""

    where: str

    def __init__(self, run_id: str, heartbeat_s: float, stale_after_s: float) -> None:
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder this lock replaced, if any

    def _content(self, started: float) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": started,
                "heartbeat": time.time(),
            }
        )

    def is_stale(self, holder: dict[str, Any]) -> bool:
        """Whether ``holder`` is gone (see the module docstring)."""
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return True
        return time.time() - float(holder.get("heartbeat", 0)) > self.stale_after_s

    def _refusal(self, holder: dict[str, Any]) -> str:
        age = time.time() - float(holder.get("heartbeat", 0))
        since = datetime.fromtimestamp(float(holder.get("started", 0)), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        return (
            f"another realsyn pipeline is running on these tables: run {holder.get('run_id', '?')}, "
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {since} UTC, "
            f"last heartbeat {age:.0f} s ago (lock {self.where}). Wait for it to finish; a lock whose process is "
            f"gone, or whose heartbeat is older than {self.stale_after_s:.0f} s, is taken over automatically."
        )

    def _start_heartbeat(self, started: float) -> None:
        self._thread = threading.Thread(target=self._beat, args=(started,), name="pipeline-lock", daemon=True)
        self._thread.start()

    def _beat(self, started: float) -> None:
        raise NotImplementedError

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def acquire(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _parsed(text: str) -> dict[str, Any] | None:
    try:
        found = json.loads(text)
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


class PipelineLock(Lock):
    """A lock file naming its holder, created atomically; its holder rewrites the heartbeat every
    ``heartbeat_s``, and :meth:`release` removes the file if it is still this holder's."""

    def __init__(self, path: Path, run_id: str, heartbeat_s: float = 10.0, stale_after_s: float = 120.0) -> None:
        super().__init__(run_id, heartbeat_s, stale_after_s)
        self.path = path
        self.where = str(path)

    def holder(self) -> dict[str, Any] | None:
        """The current holder's record, or None when there is no lock file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        found = _parsed(text)
        if found is None:  # being written, or torn by a crash: judge it by its age
            found = {"heartbeat": self.path.stat().st_mtime}
        return found

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PipelineLocked` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                if not self.is_stale(holder):
                    raise PipelineLocked(self._refusal(holder)) from None
                # Move the stale file aside atomically: of two pipelines taking over at once, one wins.
                aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
                try:
                    self.path.rename(aside)
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                self.took_over = holder
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self._content(started))
            self._start_heartbeat(started)
            return
        raise PipelineLocked(f"could not take the lock {self.path}: other pipelines keep taking it")

    def _beat(self, started: float) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.holder()
            if holder is None or holder.get("run_id") != self.run_id:
                log.error("pipeline lock %s was taken by another run: %s", self.path, holder)
                return
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(self._content(started), encoding="utf-8")
            tmp.replace(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this run's."""
        self._stop_heartbeat()
        holder = self.holder()
        if holder is not None and holder.get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)


def _precondition_failed(error: BaseException) -> bool:
    """Whether an s3fs error is S3 refusing a conditional write (412, or 409 for a concurrent one)."""
    if isinstance(error, FileExistsError):  # s3fs's translation of a failed If-None-Match
        return True
    cause = error.__cause__
    response = getattr(cause, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class S3PipelineLock(Lock):
    """The lock as an S3 object (see the module docstring): every write is conditional on what was last read."""

    def __init__(
        self, url: str, run_id: str, heartbeat_s: float = 10.0, stale_after_s: float = 120.0, fs: Any = None
    ) -> None:
        super().__init__(run_id, heartbeat_s, stale_after_s)
        self.where = url
        self.bucket, _, self.key = url.removeprefix("s3://").partition("/")
        self._fs = fs
        self._etag: str | None = None

    @property
    def fs(self) -> Any:
        """The s3fs filesystem (created on first use: the ``s3`` extra)."""
        if self._fs is None:
            try:
                import s3fs
            except ImportError as e:
                raise PipelineLocked(
                    f"storage.root is on S3 ({self.where}): the pipeline's lock there needs s3fs "
                    "(pip install 'realsyn[s3]')"
                ) from e
            self._fs = s3fs.S3FileSystem()
        return self._fs

    def read(self) -> tuple[dict[str, Any], str] | None:
        """The holder's record and the object's ETag, read in one request; None when there is no lock."""
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            data, etag = sync(self.fs.loop, get)
        except FileNotFoundError:
            return None
        found = _parsed(data.decode("utf-8", "replace"))
        return (found if found is not None else {"heartbeat": 0.0}), etag

    def holder(self) -> dict[str, Any] | None:
        """The current holder's record, or None when there is no lock object."""
        current = self.read()
        return current[0] if current is not None else None

    def _put(self, started: float, **condition: str) -> bool:
        """Write this holder's record if ``condition`` holds; False when S3 refuses it."""
        try:
            response = self.fs.call_s3(
                "put_object", Bucket=self.bucket, Key=self.key, Body=self._content(started).encode(), **condition
            )
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        self._etag = response["ETag"]
        return True

    def acquire(self) -> None:
        """Take the lock, or raise :class:`PipelineLocked` naming the live holder."""
        started = time.time()
        for _ in range(3):
            if self._put(started, IfNoneMatch="*"):
                self._start_heartbeat(started)
                return
            current = self.read()
            if current is None:
                continue  # released meanwhile
            holder, etag = current
            if not self.is_stale(holder):
                raise PipelineLocked(self._refusal(holder))
            if self._put(started, IfMatch=etag):  # of two pipelines taking over at once, one wins
                self.took_over = holder
                self._start_heartbeat(started)
                return
        raise PipelineLocked(f"could not take the lock {self.where}: other pipelines keep taking it")

    def _beat(self, started: float) -> None:
        while not self._stop.wait(self.heartbeat_s):
            assert self._etag is not None
            try:
                if not self._put(started, IfMatch=self._etag):
                    log.error("pipeline lock %s was taken by another run: %s", self.where, self.holder())
                    return
            except OSError as e:  # S3 unreachable for a moment: try again at the next beat
                log.warning("pipeline lock %s: heartbeat not written (%s)", self.where, e)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still this run's (if S3 cannot be reached, the
        object is left to go stale: the run's work is done either way)."""
        self._stop_heartbeat()
        try:
            holder = self.holder()
            if holder is not None and holder.get("run_id") == self.run_id:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
        except OSError as e:
            log.warning("pipeline lock %s not removed (%s); it is taken over once stale", self.where, e)
