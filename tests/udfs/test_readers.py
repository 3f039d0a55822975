"""Reading data: URIs, local files and object-store URIs, each refused outside what is allowed."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from udfs import readers


def _refusal(fn: Callable[..., object], *args: object) -> tuple[str, str, bool]:
    """What ``fn(*args)`` raised: the reason, detail and retryable of its ReadFailed."""
    with pytest.raises(readers.ReadFailed) as info:
        fn(*args)
    return info.value.reason, info.value.detail, info.value.retryable


def test_data_uris() -> None:
    payload = b"\x89PNG\r\n\x1a\n bytes"
    assert readers.read_data_uri("data:image/png;base64," + base64.b64encode(payload).decode(), 100) == payload
    assert readers.read_data_uri("data:text/plain,a%20b", 100) == b"a b"
    assert _refusal(readers.read_data_uri, "data:image/png;base64", 100) == (
        readers.REASON_INVALID,
        "data URI without ','",
        False,
    )
    assert _refusal(readers.read_data_uri, "data:image/png;base64,@@@", 100)[0] == readers.REASON_INVALID
    assert _refusal(readers.read_data_uri, "data:image/png;base64," + "A" * 200, 100) == (
        readers.REASON_TOO_LARGE,
        "data URI of more than max_bytes=100 bytes",
        False,
    )


def test_local_paths() -> None:
    assert readers.local_path("/photos/a b.jpg") == "/photos/a b.jpg"
    assert readers.local_path("file:///photos/a%20b.jpg") == "/photos/a b.jpg"
    assert readers.local_path("FILE://localhost/photos/a.jpg") == "/photos/a.jpg"
    assert _refusal(readers.local_path, "file://otherhost/etc/x.jpg") == (
        readers.REASON_REFUSED,
        "file URI on another host 'otherhost' refused",
        False,
    )


def test_files_only_under_the_roots(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.jpg").write_bytes(b"12345")
    (outside / "b.jpg").write_bytes(b"12345")
    (inside / "link.jpg").symlink_to(outside / "b.jpg")
    roots = (os.path.realpath(inside),)
    assert readers.read_file(str(inside / "a.jpg"), roots, 5) == b"12345"
    assert _refusal(readers.read_file, str(inside / "a.jpg"), roots, 4) == (
        readers.REASON_TOO_LARGE,
        "5 bytes > max_bytes=4",
        False,
    )
    real_b = os.path.realpath(outside / "b.jpg")
    assert _refusal(readers.read_file, str(inside / "link.jpg"), roots, 5) == (
        readers.REASON_REFUSED,
        f"{real_b} is outside fetch.file_roots",
        False,
    )
    assert _refusal(readers.read_file, str(outside / "b.jpg"), (), 5)[0] == readers.REASON_REFUSED  # no roots
    assert _refusal(readers.read_file, str(inside / "absent.jpg"), roots, 5)[0] == readers.REASON_NOT_FOUND
    assert _refusal(readers.read_file, str(inside), roots, 5)[0] == readers.REASON_IO_ERROR  # a folder


def test_objects_only_under_the_prefixes() -> None:
    def check(url: str, *prefixes: str) -> None:
        normal = [readers.normal_object_url(urllib.parse.urlsplit(p)) for p in prefixes]
        readers.check_object_prefix(url, urllib.parse.urlsplit(url), normal)

    check("dbfs:/FileStore/a.jpg", "dbfs:///FileStore/")
    check("s3://bucket/a/b.jpg", "S3://bucket")
    check("s3://bucket/a", "s3://bucket/a/")
    for url, detail in [
        ("s3://bucket-2/a.jpg", "s3://bucket-2/a.jpg is not under any of fetch.object_prefixes"),
        ("s3://bucket/../other/a.jpg", "object reference with '.' or '..' path segments refused"),
        ("s3://bucket/./a.jpg", "object reference with '.' or '..' path segments refused"),
    ]:
        assert _refusal(check, url, "s3://bucket") == (readers.REASON_REFUSED, detail, False)


def test_objects_through_fsspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with fsspec.open("memory://realsyn-readers/a.jpg", "wb") as f:
        f.write(b"12345")
    assert readers.read_object("memory://realsyn-readers/a.jpg", 5) == b"12345"
    assert _refusal(readers.read_object, "memory://realsyn-readers/a.jpg", 4) == (
        readers.REASON_TOO_LARGE,
        "more than max_bytes=4 bytes",
        False,
    )
    assert _refusal(readers.read_object, "memory://realsyn-readers/absent.jpg", 5)[0] == readers.REASON_NOT_FOUND
    reason, detail, retryable = _refusal(readers.read_object, "nosuchprotocol://bucket/a.jpg", 5)
    assert (reason, retryable) == (readers.REASON_IO_ERROR, False) and detail.startswith("cannot open ")
    # dbfs:/ is read from the FUSE mount where a node has one.
    (tmp_path / "FileStore").mkdir()
    (tmp_path / "FileStore" / "a.jpg").write_bytes(b"dbfs!")
    monkeypatch.setattr(readers, "DBFS_MOUNT", str(tmp_path))
    assert readers.read_object("dbfs:/FileStore/a.jpg", 5) == b"dbfs!"


def test_a_read_in_a_thread_is_abandoned_at_the_deadline() -> None:
    release = threading.Event()

    def hung() -> bytes:
        release.wait(10)
        return b"late"

    def refused() -> bytes:
        raise readers.ReadFailed(readers.REASON_NOT_FOUND, "gone")

    async def run() -> float:
        assert await readers.read_in_thread(1.0, lambda: b"quick") == b"quick"
        with pytest.raises(readers.ReadFailed):
            await readers.read_in_thread(1.0, refused)
        started = time.monotonic()
        with pytest.raises((TimeoutError, asyncio.TimeoutError)):
            await readers.read_in_thread(0.2, hung)
        return time.monotonic() - started

    waited = asyncio.run(run())
    release.set()
    assert waited < 1.0
