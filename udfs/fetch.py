"""Image acquisition: fetch image references safely and fast, one result record per URL with a final status.

Sources: ``http(s)://`` URLs (async, aiohttp), local paths and ``file://`` URIs, ``data:`` URIs (inline bytes),
and any URI that fsspec reads (``s3://`` with s3fs, the ``s3`` extra; ``gs://``, ``abfss://``, ``dbfs:/``...).
Pure: no Spark import; the Spark stage (``realsyn.fetch``) calls :func:`fetch_arrow` inside each task.

Safety, on by default:
- the address a host name resolves to is checked before connecting (and on every redirect hop): private,
  loopback, link-local (169.254.169.254, the cloud metadata service), multicast, reserved and other non-global
  addresses are refused unless a network is on the allow-list; the connection goes to the checked address;
- responses larger than ``max_bytes`` are cut off while streaming; images larger than ``max_pixels`` are refused
  from their header (decompression bombs); content is accepted only when Pillow decodes it, whatever the
  Content-Type says;
- ``X-Robots-Tag: noai`` / ``noimageai`` (optionally addressed to our user-agent token) is honoured;
- local files (``file://`` and absolute paths) are read only when ``file`` is an allowed scheme *and*
  ``file_roots`` names the folders they must lie under; object stores (``s3://``, ``gs://``, ``dbfs:/``...) only
  under a prefix of ``object_prefixes``; a reference that is neither a URL nor an absolute path is invalid;
- every read (HTTP, file, object store, ``data:``) ends within ``total_timeout_s``: file and object reads run in
  daemon threads that are abandoned at the deadline (a FIFO or a hung mount cannot hold the task).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.utils
import ipaddress
import os
import queue
import random
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from udfs.decode import (
    DEFAULT_MAX_DECODED_BYTES,
    REASON_EMPTY_IMAGE,
    REASON_NOT_AN_IMAGE,
    REASON_TOO_MANY_PIXELS,
    REASON_UNDECODABLE,
    ImageHeader,
    Rejected,
    bound_decode,
    decode_failure,
    exif_orientation,
    read_header,
)
from udfs.fetch_schema import ARROW_SCHEMA, FetchOptions
from udfs.ids import bytes_id
from udfs.urls import has_userinfo, redact_text, redact_url

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # aiohttp depends on async-timeout before Python 3.11
    from async_timeout import timeout as _deadline

K = TypeVar("K")

# Final statuses. Every URL ends in exactly one of them.
OK = "ok"
HTTP_ERROR = "http_error"  # an HTTP status other than 2xx / redirect (http_status says which)
TIMEOUT = "timeout"  # connect, read or total timeout
# Refused, reset, TLS error, or closed early (a body shorter than its Content-Length: a connection dropped mid-body
# looks the same, so it is retried).
CONNECTION_ERROR = "connection_error"
# The reply is not valid HTTP: more body bytes than Content-Length declares, a bad status line or header. Not retried.
MALFORMED_RESPONSE = "malformed_response"
DNS_ERROR = "dns_error"  # the host name does not resolve
TOO_LARGE = "too_large"  # more than max_bytes (Content-Length or counted while streaming)
TOO_MANY_PIXELS = "too_many_pixels"  # width x height over max_pixels: a decompression bomb
NOT_AN_IMAGE = "not_an_image"  # Pillow does not recognise the bytes as an image (HTML, text, ...)
DECODE_ERROR = "decode_error"  # recognised as an image but does not decode (truncated, corrupt)
BLOCKED = "blocked"  # refused address or scheme (SSRF protection), or a file outside file_roots
OPTED_OUT = "opted_out"  # X-Robots-Tag forbids AI use
TOO_MANY_REDIRECTS = "too_many_redirects"
INVALID_URL = "invalid_url"
NOT_FOUND = "not_found"  # a file or object that does not exist
IO_ERROR = "io_error"  # any other error reading a file or object
CREDENTIALS_IN_URL = "credentials_in_url"  # userinfo in the URL, refused by credentials_in_url="refuse"
ERROR = "error"  # an unexpected error; the text is in `error`

STATUSES = (
    OK,
    HTTP_ERROR,
    TIMEOUT,
    CONNECTION_ERROR,
    MALFORMED_RESPONSE,
    DNS_ERROR,
    TOO_LARGE,
    TOO_MANY_PIXELS,
    NOT_AN_IMAGE,
    DECODE_ERROR,
    BLOCKED,
    OPTED_OUT,
    TOO_MANY_REDIRECTS,
    INVALID_URL,
    NOT_FOUND,
    IO_ERROR,
    CREDENTIALS_IN_URL,
    ERROR,
)

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Where Databricks mounts DBFS on every node: dbfs:/ references are read there when it exists (FUSE: no API token).
DBFS_MOUNT = "/dbfs"
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "tiff": "tif", "bmp": "bmp"}


@dataclass
class FetchResult:
    """The outcome of one URL: a final status, and the image when ``status == "ok"``."""

    url: str
    status: str
    retryable: bool = False
    http_status: int | None = None
    error: str | None = None
    attempts: int = 0
    elapsed_ms: int = 0
    fetched_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    image_id: str | None = None
    content: bytes | None = None
    content_path: str | None = None
    n_bytes: int | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


def is_transient(status: str, http_status: int | None) -> bool:
    """Whether a failure may succeed later: timeouts, connection errors, HTTP 429 and 5xx."""
    if status in (TIMEOUT, CONNECTION_ERROR):
        return True
    return status == HTTP_ERROR and http_status is not None and (http_status == 429 or http_status >= 500)


class StatusCounts:
    """Accumulator parameter (Spark's ``AccumulatorParam`` protocol) summing ``{status: [rows, bytes]}``.

    Tasks count what they return, so the driver knows the rows per status of a write without reading them back.
    """

    def zero(self, value: dict[str, list[int]]) -> dict[str, list[int]]:
        """An empty count."""
        return {}

    def addInPlace(self, value1: dict[str, list[int]], value2: dict[str, list[int]]) -> dict[str, list[int]]:
        """Add ``value2`` into ``value1``."""
        for status, (rows, size) in value2.items():
            total = value1.setdefault(status, [0, 0])
            total[0] += rows
            total[1] += size
        return value1


def count_statuses(batch: pa.RecordBatch, into: dict[str, list[int]]) -> None:
    """Add the rows and ``n_bytes`` per ``status`` of ``batch`` (of :data:`ARROW_SCHEMA`) to ``into``."""
    for status, size in zip(batch.column("status").to_pylist(), batch.column("n_bytes").to_pylist(), strict=True):
        total = into.setdefault(status, [0, 0])
        total[0] += 1
        total[1] += size or 0


class BlockedAddressError(Exception):
    """A host resolved only to refused addresses (or is a refused IP literal)."""


def parse_networks(networks: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse allow-list entries ("127.0.0.0/8", "::1") into networks; raise ValueError on a bad entry."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def blocked_reason(address: str, allow: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> str | None:
    """Why connecting to IP ``address`` is refused (None: allowed). The allow-list wins over every rule."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if any(ip in net for net in allow):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
        if any(ip in net for net in allow):
            return None
    for check in ("is_loopback", "is_link_local", "is_multicast", "is_unspecified", "is_reserved", "is_private"):
        if getattr(ip, check):
            return check[3:].replace("_", "-")
    if not ip.is_global:
        return "not-global"
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def opted_out(x_robots_tags: Iterable[str], token: str, directives: Sequence[str]) -> bool:
    """Whether X-Robots-Tag values forbid use, globally or for user agent ``token`` ("realsyn: noai")."""
    wanted = {d.lower() for d in directives}
    for value in x_robots_tags:
        agent, sep, rest = value.partition(":")
        scoped = bool(sep) and agent.strip().lower() not in wanted and " " not in agent.strip()
        if scoped and agent.strip().lower() != token.lower():
            continue
        listed = rest if scoped else value
        if any(d.strip().lower() in wanted for d in listed.split(",")):
            return True
    return False


@dataclass(frozen=True)
class ImageCheck:
    """What decoding a candidate image found."""

    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None


# What the decoder's reasons are called among the fetch statuses (zero bytes are no image format either).
_DECODE_STATUS = {
    REASON_EMPTY_IMAGE: NOT_AN_IMAGE,
    REASON_NOT_AN_IMAGE: NOT_AN_IMAGE,
    REASON_UNDECODABLE: DECODE_ERROR,
    REASON_TOO_MANY_PIXELS: TOO_MANY_PIXELS,
}


def check_header(data: bytes, max_pixels: int) -> ImageHeader | ImageCheck:
    """The header of ``data`` (udfs.decode.read_header: no pixel data read), or the final check when the bytes are
    no image, do not parse or have too many pixels."""
    try:
        return read_header(data, max_pixels)
    except Rejected as r:
        return ImageCheck(_DECODE_STATUS[r.reason], r.detail or "not a recognised image format")


def decode_check(header: ImageHeader, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> ImageCheck:
    """Decode the image of ``header`` (then closed) to prove its data whole; width and height as displayed.

    JPEG is decoded at reduced DCT scale, which still reads every byte of the image data. Another image whose
    decoded pixels would take more than ``max_decoded_bytes`` is refused (too_many_pixels) without decoding.
    """

    img, fmt = header.image, header.format
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            orientation = exif_orientation(img)
            if fmt == "JPEG":
                img.draft(None, (max(1, header.width // 8), max(1, header.height // 8)))
            turned = orientation in (5, 6, 7, 8)
            width, height = (header.height, header.width) if turned else (header.width, header.height)
            too_big = bound_decode(img, max_decoded_bytes)
            if too_big is not None:
                return ImageCheck(TOO_MANY_PIXELS, too_big, width, height, fmt)
            img.load()
        except Exception as e:
            failure = decode_failure(e)
            return ImageCheck(_DECODE_STATUS[failure.reason], failure.detail, format=fmt)
        finally:
            img.close()
    return ImageCheck(OK, None, width, height, fmt)


def validate_image(data: bytes, max_pixels: int, max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> ImageCheck:
    """Decode ``data`` with Pillow: refuse non-images, undecodable data and images over ``max_pixels``.

    The pixel limit is checked from the header before decoding. Width and height are as displayed (after the
    EXIF orientation).
    """
    header = check_header(data, max_pixels)
    return header if isinstance(header, ImageCheck) else decode_check(header, max_decoded_bytes)


def store_content(prefix: str, image_id: str, fmt: str | None, data: bytes) -> str:
    """Write image bytes to ``<prefix>/<id[:2]>/<id>.<ext>`` (local folder or fsspec URI); return the path.

    The name is the content hash, so a rewrite after a retry writes the same bytes to the same place. A local
    file appears whole or not at all (written under a temporary name of its own, then renamed), so one that
    exists already holds these bytes and is left alone: the same image at many URLs, fetched by many threads and
    tasks at once, is written once or a few times, never half.
    """
    path = f"{prefix.rstrip('/')}/{image_id[:2]}/{image_id}.{_EXT.get((fmt or '').lower(), 'bin')}"
    if "://" not in prefix:
        target = Path(path)
        if target.exists():
            return path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("xb") as f:
                f.write(data)
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
    import fsspec

    with fsspec.open(path, "wb") as f:
        f.write(data)
    return path


class _Outcome(Exception):
    """Ends one attempt with a status (raised from deep inside the HTTP code, caught by the attempt loop)."""

    def __init__(
        self,
        status: str,
        error: str | None = None,
        http_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.http_status = http_status
        self.retry_after = retry_after
        self.retryable = retryable


def _make_resolver(allow: tuple[Any, ...], executor: ThreadPoolExecutor) -> Any:
    from aiohttp.abc import AbstractResolver, ResolveResult

    class GuardedResolver(AbstractResolver):
        """Threaded getaddrinfo with a per-fetcher cache that returns only allowed addresses."""

        def __init__(self) -> None:
            self._cache: dict[tuple[str, int, int], tuple[float, asyncio.Future[list[ResolveResult]]]] = {}

        async def _lookup(self, host: str, port: int, family: int) -> list[ResolveResult]:
            loop = asyncio.get_running_loop()
            infos = await loop.run_in_executor(
                executor, lambda: socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            )
            allowed: list[ResolveResult] = []
            refused: list[str] = []
            for fam, _, proto, _, sockaddr in infos:
                address = str(sockaddr[0])
                reason = blocked_reason(address, allow)
                if reason is not None:
                    refused.append(f"{address} ({reason})")
                    continue
                allowed.append(
                    ResolveResult(
                        hostname=host,
                        host=address,
                        port=int(sockaddr[1]),
                        family=fam,
                        proto=proto,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
            if not allowed:
                raise BlockedAddressError(f"{host} resolves to refused address {', '.join(refused[:3])}")
            return allowed

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            key = (host, port, int(family))
            now = time.monotonic()
            cached = self._cache.get(key)
            if cached is None or now - cached[0] > 300.0:
                cached = (now, asyncio.ensure_future(self._lookup(host, port, int(family))))
                self._cache[key] = cached
            try:
                return await asyncio.shield(cached[1])
            except socket.gaierror as e:
                if e.errno == socket.EAI_AGAIN:  # a temporary failure is not cached
                    self._cache.pop(key, None)
                raise

        async def close(self) -> None:
            for _, fut in self._cache.values():
                if not fut.done():
                    fut.cancel()
            self._cache.clear()

    return GuardedResolver()


class Fetcher:
    """Fetches URLs concurrently inside one running event loop (use :func:`iter_fetch` from sync code)."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._allow = parse_networks(options.allow_networks)
        self._roots = tuple(os.path.realpath(r) for r in options.file_roots)
        self._schemes = frozenset(s.lower() for s in options.allowed_schemes)
        self._prefixes = tuple(_normal_object_url(urllib.parse.urlsplit(p)) for p in options.object_prefixes)
        self._host_slots: dict[str, asyncio.Semaphore] = {}
        self._literal_checks: dict[str, str | None] = {}  # host of a URL -> why refused, when an IP literal
        self._io = ThreadPoolExecutor(options.io_threads, thread_name_prefix="fetch-io")
        self._dns = ThreadPoolExecutor(options.dns_threads, thread_name_prefix="fetch-dns")
        self._decode = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="fetch-decode")
        self._session: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._reads: asyncio.Semaphore | None = None

    async def __aenter__(self) -> Fetcher:
        import aiohttp

        o = self.options
        self._slots = asyncio.Semaphore(o.concurrency)
        self._reads = asyncio.Semaphore(o.io_threads)
        connector = aiohttp.TCPConnector(
            limit=0,
            use_dns_cache=False,
            resolver=_make_resolver(self._allow, self._dns),
            ssl=o.verify_tls,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # a proxy would hide the real destination from the address check
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": o.user_agent, "Accept": "image/avif,image/webp,image/*,*/*;q=0.8"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=o.connect_timeout_s, sock_read=o.read_timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        for pool in (self._io, self._dns, self._decode):
            pool.shutdown(wait=False, cancel_futures=True)

    async def fetch(self, url: str) -> FetchResult:
        """Fetch one URL to a final result; never raises (except on cancellation)."""
        start = time.monotonic()
        attempts = 0
        o = self.options
        while True:
            attempts += 1
            try:
                result = await self._attempt(url)
                break
            except _Outcome as out:
                wait = out.retry_after
                if out.retryable and attempts < o.max_attempts and (wait is None or wait <= o.max_retry_after_s):
                    if wait is None:
                        wait = min(o.backoff_max_s, o.backoff_base_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1)
                    await asyncio.sleep(wait)
                    continue
                error = out.error
                if wait is not None and wait > o.max_retry_after_s:
                    error = f"{error}; Retry-After {wait:.0f} s is over max_retry_after_s={o.max_retry_after_s:g}"
                result = FetchResult(url, out.status, out.retryable, out.http_status, error)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or an unforeseen library error must not stop the batch
                result = FetchResult(url, ERROR, False, None, f"{type(e).__name__}: {e}")
                break
        result.attempts = attempts
        result.elapsed_ms = int((time.monotonic() - start) * 1000)
        result.fetched_at = datetime.now(timezone.utc)
        return result

    async def _attempt(self, url: str) -> FetchResult:
        if not isinstance(url, str) or not url.strip():
            raise _Outcome(INVALID_URL, "empty URL")
        url = url.strip()
        o = self.options
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as e:  # e.g. an unclosed IPv6 bracket: http://[::1/x
            raise _Outcome(INVALID_URL, f"{type(e).__name__}: {e}") from None
        scheme = parts.scheme.lower()
        if len(scheme) == 1:  # a Windows drive letter, not a scheme
            scheme = ""
        if not scheme and not Path(url).is_absolute():
            raise _Outcome(INVALID_URL, "neither a URL nor an absolute path")
        kind = scheme or "file"
        if kind not in self._schemes:
            raise _Outcome(BLOCKED, f"scheme {kind!r} is not in fetch.allowed_schemes")
        if o.credentials_in_url == "refuse" and has_userinfo(url):
            raise _Outcome(CREDENTIALS_IN_URL, "user name or password in the URL (fetch.credentials_in_url: refuse)")
        if scheme in ("http", "https"):
            data, http_status = await self._get_http(url)
        elif scheme == "data":
            data, http_status = await self._read_under_deadline(False, _read_data_uri, url, o.max_bytes), None
        elif kind == "file":
            if not self._roots:
                raise _Outcome(BLOCKED, "local files are read only under fetch.file_roots, and none is set")
            path = _local_path(url)
            data, http_status = await self._read_under_deadline(False, self._read_file, path), None
        else:
            self._check_object_prefix(url, parts)
            data, http_status = await self._read_under_deadline(True, _read_fsspec, url, o.max_bytes), None
        return await self._accept(url, data, http_status)

    def _check_object_prefix(self, url: str, parts: urllib.parse.SplitResult) -> None:
        if any(segment in (".", "..") for segment in parts.path.split("/")):
            raise _Outcome(BLOCKED, "object reference with '.' or '..' path segments refused")
        normal = _normal_object_url(parts)
        if not any(normal == p or normal.startswith(p + "/") for p in self._prefixes):
            raise _Outcome(BLOCKED, f"{url} is not under any of fetch.object_prefixes")

    async def _read_under_deadline(self, retryable: bool, fn: Callable[..., bytes], *args: Any) -> bytes:
        """Run the blocking read ``fn(*args)`` in a daemon thread; give up on it after ``total_timeout_s``.

        A read that never returns (a FIFO, a hung network mount) leaves its thread blocked, but the daemon thread
        does not keep the worker from exiting, and the fetch ends as ``timeout``.
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
                value = fn(*args)
            except BaseException as e:
                error = e
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this read any more
                loop.call_soon_threadsafe(settle, value, error)

        assert self._reads is not None
        async with self._reads:
            threading.Thread(target=work, name="fetch-read", daemon=True).start()
            try:
                return await asyncio.wait_for(asyncio.shield(done), self.options.total_timeout_s)
            except (TimeoutError, asyncio.TimeoutError):
                raise _Outcome(
                    TIMEOUT,
                    f"read not finished within total_timeout_s={self.options.total_timeout_s:g}",
                    None,
                    None,
                    retryable,
                ) from None

    async def _in_thread(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _accept(self, url: str, data: bytes, http_status: int | None) -> FetchResult:
        o = self.options
        # Small images are decoded on the loop: cheaper than handing them to a thread and back (the check then
        # costs ~30% less CPU per web-sized image); large ones in a thread, so that the loop keeps serving.
        header = check_header(data, o.max_pixels)
        if isinstance(header, ImageCheck):
            check = header
        elif header.pixels <= o.inline_decode_pixels:
            check = decode_check(header, o.max_decoded_bytes)
        else:
            check = await self._in_thread(self._decode, decode_check, header, o.max_decoded_bytes)
        if check.status != OK:
            raise _Outcome(check.status, check.error, http_status)
        image_id = bytes_id(data)
        result = FetchResult(url, OK, False, http_status, None, image_id=image_id, n_bytes=len(data))
        # Lower-case, as in silver.images ("jpeg", "png"): one spelling of a format in every table.
        fmt = check.format.lower() if check.format else None
        result.width, result.height, result.format = check.width, check.height, fmt
        if o.content_prefix:
            args = (o.content_prefix, image_id, check.format, data)
            result.content_path = await self._in_thread(self._io, store_content, *args)
        else:
            result.content = data
        return result

    def _read_file(self, path: str) -> bytes:
        real = os.path.realpath(path)
        if self._roots and not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self._roots):
            raise _Outcome(BLOCKED, f"{real} is outside fetch.file_roots")
        try:
            with open(real, "rb") as f:  # noqa: PTH123
                size = os.fstat(f.fileno()).st_size
                if size > self.options.max_bytes:
                    raise _Outcome(TOO_LARGE, f"{size} bytes > max_bytes={self.options.max_bytes}")
                return f.read(self.options.max_bytes + 1)
        except FileNotFoundError as e:
            raise _Outcome(NOT_FOUND, str(e)) from None
        except OSError as e:
            raise _Outcome(IO_ERROR, f"{type(e).__name__}: {e}") from None

    def _host_slot(self, host: str) -> asyncio.Semaphore:
        slot = self._host_slots.get(host)
        if slot is None:
            slot = self._host_slots[host] = asyncio.Semaphore(self.options.per_host)
        return slot

    def _check_hop(self, url: Any) -> None:
        if url.scheme not in ("http", "https") or url.scheme not in self._schemes:
            raise _Outcome(BLOCKED, f"redirect to scheme {url.scheme!r} refused")
        host = url.raw_host
        if not host:
            raise _Outcome(INVALID_URL, "no host")
        if "xn--" in host:
            try:
                _ = url.host  # decodes the punycode labels
            except UnicodeError as e:
                raise _Outcome(INVALID_URL, f"host {host!r} is not valid IDNA: {e}") from None
        if self.options.credentials_in_url == "refuse" and (url.raw_user or url.raw_password):
            raise _Outcome(CREDENTIALS_IN_URL, "user name or password in a redirect (fetch.credentials_in_url: refuse)")
        try:
            reason = self._literal_checks[host]
        except KeyError:
            try:
                reason = blocked_reason(host, self._allow)
            except ValueError:
                reason = None  # a host name: checked on its resolved addresses by the resolver
            if len(self._literal_checks) < 100_000:
                self._literal_checks[host] = reason
        if reason is not None:
            raise _Outcome(BLOCKED, f"address {host} refused ({reason})")

    async def _get_http(self, url: str) -> tuple[bytes, int]:
        import aiohttp
        from yarl import URL

        o = self.options
        assert self._slots is not None
        try:
            current = URL(url, encoded="%" in url)
        except (ValueError, TypeError) as e:
            raise _Outcome(INVALID_URL, f"{type(e).__name__}: {e}") from None
        deadline: float | None = None
        for _hop in range(o.max_redirects + 1):
            self._check_hop(current)
            async with self._host_slot(current.raw_host or ""), self._slots:
                if deadline is None:
                    deadline = time.monotonic() + o.total_timeout_s
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with _deadline(remaining):
                        redirect, payload = await self._request(current)
                except _Outcome:
                    raise
                except (TimeoutError, asyncio.TimeoutError):
                    raise _Outcome(TIMEOUT, f"no complete answer within the timeouts ({url})", retryable=True) from None
                except BlockedAddressError as e:
                    raise _Outcome(BLOCKED, str(e)) from None
                except aiohttp.ClientConnectorDNSError as e:
                    cause = e.os_error
                    temporary = isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_AGAIN
                    raise _Outcome(DNS_ERROR, f"{current.host}: {cause}", retryable=temporary) from None
                except aiohttp.InvalidURL as e:
                    raise _Outcome(INVALID_URL, f"{type(e).__name__}: {e}") from None
                except aiohttp.ClientResponseError as e:  # the reply does not parse (allow_redirects=False: no other)
                    raise _Outcome(MALFORMED_RESPONSE, _malformed(e.message)) from None
                except (aiohttp.ClientError, OSError) as e:
                    raise _Outcome(CONNECTION_ERROR, f"{type(e).__name__}: {e}", retryable=True) from None
                except ValueError as e:
                    raise _Outcome(INVALID_URL, f"{type(e).__name__}: {e}") from None
            if redirect is None:
                assert payload is not None
                return payload
            current = redirect
        raise _Outcome(TOO_MANY_REDIRECTS, f"more than max_redirects={o.max_redirects} redirects")

    async def _request(self, url: Any) -> tuple[Any, tuple[bytes, int] | None]:
        from yarl import URL

        o = self.options
        async with self._session.get(url, allow_redirects=False) as resp:
            status = resp.status
            if status in REDIRECT_CODES:
                location = resp.headers.get("Location")
                if not location:
                    raise _Outcome(HTTP_ERROR, f"redirect {status} without Location", status)
                return url.join(URL(location, encoded="%" in location)), None
            if o.opt_out_directives and opted_out(
                resp.headers.getall("X-Robots-Tag", []), o.user_agent_token, o.opt_out_directives
            ):
                raise _Outcome(OPTED_OUT, "X-Robots-Tag: " + "; ".join(resp.headers.getall("X-Robots-Tag")), status)
            if not 200 <= status < 300:
                retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
                transient = is_transient(HTTP_ERROR, status)
                raise _Outcome(HTTP_ERROR, f"HTTP {status} {resp.reason or ''}".strip(), status, retry_after, transient)
            length = resp.content_length
            if length is not None and length > o.max_bytes:
                raise _Outcome(TOO_LARGE, f"Content-Length {length} > max_bytes={o.max_bytes}", status)
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > o.max_bytes:
                    resp.close()
                    raise _Outcome(TOO_LARGE, f"more than max_bytes={o.max_bytes} bytes streamed", status)
            return None, (bytes(body), status)


def _malformed(message: str) -> str:
    """The error of a reply aiohttp cannot parse, without the raw bytes its parser quotes.

    aiohttp's parser reads bytes after a body of Content-Length as the start of the next reply: "Data after
    `Connection: close`", or "Bad status line" as for a reply that is no HTTP at all. It sees them only when they
    arrive with the reply's start; later ones are dropped, and the body of Content-Length bytes is checked as usual.
    """
    reason = " ".join(message.split("\n\n", 1)[0].split()).rstrip(":")
    return f"invalid HTTP response: {reason} (a body longer than its Content-Length, or a bad status line or header)"


def _normal_object_url(parts: urllib.parse.SplitResult) -> str:
    """``scheme://bucket/path`` without a trailing slash: ``dbfs:/a`` and ``dbfs:///a`` compare equal."""
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path}".rstrip("/")


def _local_path(url: str) -> str:
    if not url.lower().startswith("file:"):
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _Outcome(BLOCKED, f"file URI on another host {parts.netloc!r} refused")
    return urllib.request.url2pathname(parts.path)


def _read_data_uri(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise _Outcome(INVALID_URL, "data URI without ','")
    if len(payload) * 3 // 4 > max_bytes:
        raise _Outcome(TOO_LARGE, f"data URI of more than max_bytes={max_bytes} bytes")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _Outcome(INVALID_URL, f"bad base64 in data URI: {e}") from None
    return urllib.parse.unquote_to_bytes(payload)


def _read_fsspec(url: str, max_bytes: int) -> bytes:
    if url.lower().startswith("dbfs:/") and os.path.isdir(DBFS_MOUNT):  # noqa: PTH112
        url = f"{DBFS_MOUNT}/{url[len('dbfs:') :].lstrip('/')}"
    try:
        import fsspec

        with fsspec.open(url, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise _Outcome(NOT_FOUND, str(e)) from None
    except (ImportError, ValueError) as e:
        raise _Outcome(IO_ERROR, f"cannot open {url!r}: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise _Outcome(IO_ERROR, f"{type(e).__name__}: {e}", retryable=True) from None
    if len(data) > max_bytes:
        raise _Outcome(TOO_LARGE, f"more than max_bytes={max_bytes} bytes")
    return data


async def fetch_stream(
    items: Iterable[tuple[K, str]], options: FetchOptions
) -> AsyncGenerator[list[tuple[K, FetchResult]], None]:
    """Fetch ``(key, url)`` pairs, keeping many in flight; yield lists of finished pairs as they complete.

    The input is consumed lazily, so a long iterator (a Spark partition) streams through bounded memory.
    """
    source = iter(items)
    max_tasks = 4 * options.concurrency
    async with Fetcher(options) as fetcher:
        keys: dict[asyncio.Future[FetchResult], K] = {}
        finished: list[asyncio.Future[FetchResult]] = []
        wake = asyncio.Event()

        def on_done(task: asyncio.Future[FetchResult]) -> None:
            finished.append(task)
            wake.set()

        exhausted = False
        try:
            while True:
                while not exhausted and len(keys) < max_tasks:
                    try:
                        key, url = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    task: asyncio.Future[FetchResult] = asyncio.ensure_future(fetcher.fetch(url))
                    task.add_done_callback(on_done)
                    keys[task] = key
                if not keys:
                    return
                await wake.wait()
                wake.clear()
                done, finished[:] = list(finished), []
                yield [(keys.pop(t), t.result()) for t in done]
        finally:
            for task in keys:
                task.cancel()
            await asyncio.gather(*keys, return_exceptions=True)


def iter_fetch(items: Iterable[tuple[K, str]], options: FetchOptions) -> Iterator[tuple[K, FetchResult]]:
    """Synchronous :func:`fetch_stream`: yields ``(key, result)`` in completion order.

    The event loop runs in a thread of its own, so fetching goes on while the caller is busy with the results
    (a Spark task writing them to the JVM); at most ``4 * concurrency`` finished results wait for the caller.
    ``items`` is consumed in that thread.
    """
    finished: queue.Queue[list[tuple[K, FetchResult]] | BaseException | None] = queue.Queue()
    room = threading.Semaphore(4 * options.concurrency)
    stop = threading.Event()

    async def produce() -> None:
        stream = fetch_stream(items, options)
        try:
            async for chunk in stream:
                for _ in chunk:
                    while not room.acquire(blocking=False):
                        if stop.is_set():
                            return
                        await asyncio.sleep(0.002)
                finished.put(chunk)
                if stop.is_set():
                    return
        finally:
            await stream.aclose()

    def run() -> None:
        try:
            asyncio.run(produce())
            finished.put(None)
        except BaseException as e:
            finished.put(e)

    thread = threading.Thread(target=run, name="fetch-loop", daemon=True)
    thread.start()
    try:
        while True:
            got = finished.get()
            if got is None:
                return
            if isinstance(got, BaseException):
                raise got
            for pair in got:
                room.release()
                yield pair
    finally:
        stop.set()
        thread.join()


def fetch_batch(urls: Sequence[str], options: FetchOptions) -> list[FetchResult]:
    """Fetch a batch of URLs; one result per URL, in input order."""
    results: list[FetchResult | None] = [None] * len(urls)
    for i, result in iter_fetch(enumerate(urls), options):
        results[i] = result
    return [r for r in results if r is not None]


@dataclass
class FetchProgress:
    """Running counts of one fetch loop."""

    ok: int = 0
    failed: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def bytes_per_s(self) -> float:
        """Image bytes accepted per second since the start."""
        return self.bytes / max(1e-9, time.monotonic() - self.started)

    def line(self) -> str:
        """One log line: counts, volume and rate."""
        return (
            f"fetched {self.ok + self.failed:,}: ok {self.ok:,}, failed {self.failed:,}, "
            f"{self.bytes / 1e6:,.1f} MB, {self.bytes_per_s / 1e6:,.2f} MB/s"
        )


def fetch_arrow(
    batches: Iterable[pa.RecordBatch],
    options: FetchOptions,
    rows_per_batch: int = 256,
    progress: Callable[[FetchProgress], None] | None = None,
    progress_interval_s: float = 30.0,
) -> Iterator[pa.RecordBatch]:
    """Fetch the ``url`` of each input row (with its ``url_id``); yield batches of :data:`ARROW_SCHEMA`.

    The rows hold each URL and error text without userinfo or secret parameters (:func:`udfs.urls.redact_url`).

    Output batches hold at most ``rows_per_batch`` rows or about 64 MB of content, in completion order.
    ``progress`` is called every ``progress_interval_s`` seconds and once at the end.
    """

    # Read in this thread (the input stream of a Spark task belongs to it); URLs are small.
    items: list[tuple[str, str]] = []
    for batch in batches:
        items += zip(batch.column("url_id").to_pylist(), batch.column("url").to_pylist(), strict=True)

    state = FetchProgress()
    last_report = time.monotonic()
    rows: list[dict[str, Any]] = []
    size = 0
    for url_id, r in iter_fetch(items, options):
        if r.status == OK:
            state.ok += 1
            state.bytes += r.n_bytes or 0
        else:
            state.failed += 1
        row = {"url_id": url_id, **r.__dict__}
        if isinstance(r.url, str):
            row["url"] = redact_url(r.url, options.redact_query_params)[0]
        if r.error:
            row["error"] = redact_text(r.error, options.redact_query_params)
        rows.append(row)
        size += len(r.content or b"")
        if len(rows) >= rows_per_batch or size >= 64_000_000:
            yield pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA)
            rows, size = [], 0
        if progress is not None and time.monotonic() - last_report >= progress_interval_s:
            progress(state)
            last_report = time.monotonic()
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA)
    if progress is not None:
        progress(state)
