"""Image acquisition: fetch image references safely and fast, one result record per URL with a final status.

Sources: ``http(s)://`` URLs (async, aiohttp), local paths and ``file://`` URIs, ``data:`` URIs (inline bytes),
and any URI that fsspec reads (``s3://`` with s3fs, the ``s3`` extra; ``gs://``, ``abfss://``, ``dbfs:/``...).
Here: the final statuses (:data:`STATUSES`), :class:`Fetcher` (many requests in flight on one event loop, per-host
limits, retries with backoff, redirects followed hop by hop) and :func:`fetch_stream`, :func:`iter_fetch`,
:func:`fetch_batch`. Responses larger than ``max_bytes`` are cut off while streaming, and every read ends within
``total_timeout_s``. The policies it applies have modules of their own:

- :mod:`udfs.addresses`: a host's resolved address is checked before connecting, on every redirect hop too
  (private, loopback, link-local such as the cloud metadata service, ... are refused unless allow-listed);
- :mod:`udfs.http_policy`: ``Retry-After``, and ``X-Robots-Tag: noai`` / ``noimageai`` honoured;
- :mod:`udfs.readers`: ``data:`` URIs, local files only under ``file_roots``, object stores only under
  ``object_prefixes``, each read in a daemon thread abandoned at the deadline;
- :mod:`udfs.decode`: the pixel limit checked from the header (decompression bombs), content accepted only when
  Pillow decodes it, whatever the Content-Type says; :mod:`udfs.images`: the perceptual hash of an accepted image;
- :mod:`udfs.content_store`: accepted images written by content id under ``content_prefix``.

Pure: no Spark import; the Spark stage (``realsyn.stages.fetch``) calls :func:`udfs.fetch_arrow.fetch_arrow`, the
Arrow form of :func:`iter_fetch`, inside each task.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from udfs import decode, readers
from udfs.addresses import BlockedAddressError, blocked_reason, guarded_resolver, parse_networks
from udfs.content_store import store_content
from udfs.fetch_schema import FetchOptions
from udfs.http_policy import opted_out, parse_retry_after
from udfs.ids import bytes_id
from udfs.images import phash
from udfs.urls import has_userinfo

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

# What the decoder's reasons are called among the fetch statuses (zero bytes are no image format either).
_DECODE_STATUS = {
    decode.REASON_EMPTY_IMAGE: NOT_AN_IMAGE,
    decode.REASON_NOT_AN_IMAGE: NOT_AN_IMAGE,
    decode.REASON_UNDECODABLE: DECODE_ERROR,
    decode.REASON_TOO_MANY_PIXELS: TOO_MANY_PIXELS,
}
# What the readers' reasons (data: URIs, files, object stores) are called among the fetch statuses.
_READ_STATUS = {
    readers.REASON_INVALID: INVALID_URL,
    readers.REASON_REFUSED: BLOCKED,
    readers.REASON_TOO_LARGE: TOO_LARGE,
    readers.REASON_NOT_FOUND: NOT_FOUND,
    readers.REASON_IO_ERROR: IO_ERROR,
}


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
    phash: int | None = None


def examine(header: decode.ImageHeader, data: bytes, options: FetchOptions) -> tuple[decode.ImageCheck, int | None]:
    """Decode the image of ``header`` (read from ``data``) to prove it whole (:func:`udfs.decode.validate_pixels`)
    and, when it is, ``options.perceptual_hash`` is on and its size passes the hash's quality bounds
    (``hash_min_short_side``, ``hash_max_aspect_ratio``: image extraction drops the others unhashed), its perceptual
    hash (:func:`udfs.images.phash` of ``data``, None where that cannot decode it)."""
    check = decode.validate_pixels(header, options.max_decoded_bytes)
    if check.reason is not None or not options.perceptual_hash or check.width is None or check.height is None:
        return check, None
    short, long = sorted((check.width, check.height))
    if short < options.hash_min_short_side or long > short * options.hash_max_aspect_ratio:
        return check, None
    return check, phash(data)


def is_transient(status: str, http_status: int | None) -> bool:
    """Whether a failure may succeed later: timeouts, connection errors, HTTP 429 and 5xx."""
    if status in (TIMEOUT, CONNECTION_ERROR):
        return True
    return status == HTTP_ERROR and http_status is not None and (http_status == 429 or http_status >= 500)


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


class Fetcher:
    """Fetches URLs concurrently inside one running event loop (use :func:`iter_fetch` from sync code)."""

    def __init__(self, options: FetchOptions) -> None:
        self.options = options
        self._allow = parse_networks(options.allow_networks)
        self._roots = tuple(os.path.realpath(r) for r in options.file_roots)
        self._schemes = frozenset(s.lower() for s in options.allowed_schemes)
        self._prefixes = tuple(readers.normal_object_url(urllib.parse.urlsplit(p)) for p in options.object_prefixes)
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
            resolver=guarded_resolver(self._allow, self._dns),
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
        else:
            data, http_status = await self._read(url, parts, kind), None
        return await self._accept(url, data, http_status)

    async def _read(self, url: str, parts: urllib.parse.SplitResult, kind: str) -> bytes:
        """The bytes of a ``data:`` URI, local file or object reference (:mod:`udfs.readers`), read in a daemon
        thread abandoned after ``total_timeout_s``: a read that never returns (a FIFO, a hung network mount) ends the
        fetch as ``timeout``. A failed read ends the attempt with the status of its reason."""
        o = self.options
        retryable = kind not in ("data", "file")  # a timed-out object read is retried, a local one is not
        read: Callable[..., bytes]
        args: tuple[Any, ...]
        try:
            if kind == "data":
                read, args = readers.read_data_uri, (url, o.max_bytes)
            elif kind == "file":
                if not self._roots:
                    raise _Outcome(BLOCKED, "local files are read only under fetch.file_roots, and none is set")
                read, args = readers.read_file, (readers.local_path(url), self._roots, o.max_bytes)
            else:
                readers.check_object_prefix(url, parts, self._prefixes)
                read, args = readers.read_object, (url, o.max_bytes)
            assert self._reads is not None
            async with self._reads:
                return await readers.read_in_thread(o.total_timeout_s, read, *args)
        except readers.ReadFailed as e:
            raise _Outcome(_READ_STATUS[e.reason], e.detail, retryable=e.retryable) from None
        except (TimeoutError, asyncio.TimeoutError):
            error = f"read not finished within total_timeout_s={o.total_timeout_s:g}"
            raise _Outcome(TIMEOUT, error, retryable=retryable) from None

    async def _in_thread(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _accept(self, url: str, data: bytes, http_status: int | None) -> FetchResult:
        o = self.options
        # Small images are decoded on the loop: cheaper than handing them to a thread and back (the check then
        # costs ~30% less CPU per web-sized image); large ones in a thread, so that the loop keeps serving.
        try:
            header = decode.read_header(data, o.max_pixels)
        except decode.Rejected as r:
            raise _Outcome(_DECODE_STATUS[r.reason], r.detail or "not a recognised image format", http_status) from None
        if header.pixels <= o.inline_decode_pixels:
            check, hashed = examine(header, data, o)
        else:
            check, hashed = await self._in_thread(self._decode, examine, header, data, o)
        if check.reason is not None:
            raise _Outcome(_DECODE_STATUS[check.reason], check.detail, http_status)
        image_id = bytes_id(data)
        result = FetchResult(url, OK, False, http_status, None, image_id=image_id, n_bytes=len(data))
        # Lower-case, as in silver.images ("jpeg", "png"): one spelling of a format in every table.
        fmt = check.format.lower() if check.format else None
        result.width, result.height, result.format = check.width, check.height, fmt
        result.phash = hashed
        if o.content_prefix:
            args = (o.content_prefix, image_id, check.format, data)
            result.content_path = await self._in_thread(self._io, store_content, *args)
        else:
            result.content = data
        return result

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
