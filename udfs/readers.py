"""Reading the image references that are not HTTP URLs: ``data:`` URIs, local files, object-store URIs.

- :func:`read_data_uri`: the inline bytes of a ``data:`` URI (base64 or percent-encoded);
- :func:`local_path` and :func:`read_file`: a local path or ``file://`` URI (on this host only), read only when its
  real path (symlinks resolved) lies under one of the allowed roots;
- :func:`check_object_prefix` and :func:`read_object`: any URI that fsspec reads (``s3://`` with s3fs, ``gs://``,
  ``abfss://``, ``dbfs:/``...), only under an allowed prefix and without ``.`` / ``..`` segments; ``dbfs:/``
  references are read from the FUSE mount :data:`DBFS_MOUNT` where a node has it.

Every read stops after ``max_bytes`` bytes. The reads block: the fetcher (:mod:`udfs.fetch`) runs each in a daemon
thread under its deadline (:func:`read_in_thread`). A reference that is not read raises :class:`ReadFailed` with one
of the ``REASON_*`` constants below; the fetcher translates the reason to its status. Pure: no Spark import.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

# Where Databricks mounts DBFS on every node: dbfs:/ references are read there when it exists (FUSE: no API token).
DBFS_MOUNT = "/dbfs"

REASON_INVALID = "invalid"  # the reference does not parse (a data: URI without ',', bad base64)
REASON_REFUSED = "refused"  # outside the allowed roots or prefixes, or a file URI on another host
REASON_TOO_LARGE = "too_large"  # more than max_bytes
REASON_NOT_FOUND = "not_found"  # no such file or object
REASON_IO_ERROR = "io_error"  # any other error opening or reading it


class ReadFailed(Exception):
    """A reference that gives no bytes: ``reason`` is a ``REASON_*`` constant, ``detail`` says what was found;
    ``retryable`` when a later try may succeed (an object store's transient error)."""

    def __init__(self, reason: str, detail: str, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable


def read_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of the ``data:`` URI ``url`` (base64 when its header ends with ``;base64``, else
    percent-encoded)."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise ReadFailed(REASON_INVALID, "data URI without ','")
    if len(payload) * 3 // 4 > max_bytes:
        raise ReadFailed(REASON_TOO_LARGE, f"data URI of more than max_bytes={max_bytes} bytes")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ReadFailed(REASON_INVALID, f"bad base64 in data URI: {e}") from None
    return urllib.parse.unquote_to_bytes(payload)


def local_path(url: str) -> str:
    """The local path of a ``file:`` URI (on this host or ``localhost``; another host is refused); any other
    reference as it is."""
    if not url.lower().startswith("file:"):
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ReadFailed(REASON_REFUSED, f"file URI on another host {parts.netloc!r} refused")
    return urllib.request.url2pathname(parts.path)


def read_file(path: str, roots: Sequence[str], max_bytes: int) -> bytes:
    """The bytes of the local file ``path``, whose real path must be one of ``roots`` (real paths) or lie under
    one; a file larger than ``max_bytes`` is refused from its size, before reading."""
    real = os.path.realpath(path)
    if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
        raise ReadFailed(REASON_REFUSED, f"{real} is outside fetch.file_roots")
    try:
        with open(real, "rb") as f:  # noqa: PTH123
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ReadFailed(REASON_TOO_LARGE, f"{size} bytes > max_bytes={max_bytes}")
            return f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise ReadFailed(REASON_NOT_FOUND, str(e)) from None
    except OSError as e:
        raise ReadFailed(REASON_IO_ERROR, f"{type(e).__name__}: {e}") from None


def normal_object_url(parts: urllib.parse.SplitResult) -> str:
    """``scheme://bucket/path`` without a trailing slash: ``dbfs:/a`` and ``dbfs:///a`` compare equal."""
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def check_object_prefix(url: str, parts: urllib.parse.SplitResult, prefixes: Sequence[str]) -> None:
    """Refuse the object reference ``url`` (split into ``parts``) unless it is one of ``prefixes`` (each a
    :func:`normal_object_url`) or lies under one; a path with ``.`` or ``..`` segments is refused."""
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ReadFailed(REASON_REFUSED, "object reference with '.' or '..' path segments refused")
    normal = normal_object_url(parts)
    if not any(normal == p or normal.startswith(p + "/") for p in prefixes):
        raise ReadFailed(REASON_REFUSED, f"{url} is not under any of fetch.object_prefixes")


def read_object(url: str, max_bytes: int) -> bytes:
    """The bytes of the object ``url`` through fsspec (``dbfs:/`` from :data:`DBFS_MOUNT` where it exists).

    An unknown protocol or a missing filesystem package is final; any other error while reading is retryable.
    """
    if url.lower().startswith("dbfs:/") and os.path.isdir(DBFS_MOUNT):  # noqa: PTH112
        url = f"{DBFS_MOUNT}/{url[len('dbfs:') :].lstrip('/')}"
    try:
        import fsspec

        with fsspec.open(url, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise ReadFailed(REASON_NOT_FOUND, str(e)) from None
    except (ImportError, ValueError) as e:
        raise ReadFailed(REASON_IO_ERROR, f"cannot open {url!r}: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise ReadFailed(REASON_IO_ERROR, f"{type(e).__name__}: {e}", retryable=True) from None
    if len(data) > max_bytes:
        raise ReadFailed(REASON_TOO_LARGE, f"more than max_bytes={max_bytes} bytes")
    return data


async def read_in_thread(timeout_s: float, read: Callable[..., bytes], *args: Any) -> bytes:
    """Run the blocking ``read(*args)`` in a daemon thread; raise TimeoutError when it has not returned within
    ``timeout_s`` seconds.

    A read that never returns (a FIFO, a hung network mount) leaves its thread blocked, but the daemon thread does
    not keep the worker from exiting.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def settle(value: bytes | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value or b"")

    def work() -> None:
        value: bytes | None = None
        error: BaseException | None = None
        try:
            value = read(*args)
        except BaseException as e:
            error = e
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this read any more
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name="fetch-read", daemon=True).start()
    return await asyncio.wait_for(asyncio.shield(done), timeout_s)
