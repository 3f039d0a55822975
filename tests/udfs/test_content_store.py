"""Fetched image bytes written by content id to a folder or an fsspec URI."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec

from tests.support.photos import encode, photo
from udfs.content_store import store_content
from udfs.ids import bytes_id


def test_same_content_from_many_threads_at_once(tmp_path: Path) -> None:
    # The same image at many URLs: every writer must succeed and leave one whole file, no temporary ones.
    jpeg = encode(photo("china"), "JPEG")
    image_id = bytes_id(jpeg)
    for round_ in range(5):
        prefix = str(tmp_path / f"store{round_}")
        start = threading.Barrier(16)

        def write(_: int, prefix: str = prefix, start: threading.Barrier = start) -> str:
            start.wait()
            return store_content(prefix, image_id, "JPEG", jpeg)

        with ThreadPoolExecutor(16) as pool:
            paths = set(pool.map(write, range(16)))
        assert paths == {f"{prefix}/{image_id[:2]}/{image_id}.jpg"}
        assert Path(paths.pop()).read_bytes() == jpeg
        assert [p.name for p in (tmp_path / f"store{round_}" / image_id[:2]).iterdir()] == [f"{image_id}.jpg"]


def test_an_unknown_format_is_stored_as_bin_and_a_uri_through_fsspec() -> None:
    path = store_content("memory://realsyn-store/", "ab12", None, b"bytes")
    assert path == "memory://realsyn-store/ab/ab12.bin"
    with fsspec.open(path, "rb") as f:
        assert f.read() == b"bytes"
