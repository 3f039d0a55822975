"""udfs.fetch against a real HTTP server on loopback that serves good, broken and hostile answers."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from aiohttp import web
from PIL import Image
from sklearn.datasets import load_sample_image

from realsyn.ids import bytes_id
from udfs import fetch as F
from udfs.fetch_schema import ARROW_SCHEMA, DEFAULT_SCHEMES, FetchOptions

LOOPBACK = ("127.0.0.0/8", "::1/128")
# Small timeouts so that every hostile endpoint ends within a few seconds.
OPTS = FetchOptions(
    connect_timeout_s=1.0,
    read_timeout_s=0.5,
    total_timeout_s=1.5,
    max_attempts=2,
    backoff_base_s=0.05,
    backoff_max_s=0.1,
    max_retry_after_s=2.0,
    max_redirects=3,
    max_bytes=1_000_000,
    max_pixels=50_000_000,
    allow_networks=LOOPBACK,
    allowed_schemes=(*DEFAULT_SCHEMES, "memory"),
)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


PHOTO = Image.fromarray(load_sample_image("china.jpg")).resize((160, 107))
rotated = Image.fromarray(load_sample_image("flower.jpg")).resize((40, 20))
exif = Image.Exif()
exif[0x0112] = 6  # rotate 90° clockwise to display: stored 40x20, shown 20x40
BODIES = {
    "jpeg": (_encode(PHOTO, "JPEG", quality=85), "image/jpeg"),
    "png": (_encode(PHOTO, "PNG"), "image/png"),
    "webp": (_encode(PHOTO, "WEBP"), "image/webp"),
    "gif": (_encode(PHOTO.convert("P"), "GIF"), "image/gif"),
    "cmyk": (_encode(PHOTO.convert("CMYK"), "JPEG"), "image/jpeg"),
    "png16": (_encode(Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40), "PNG"), "image/png"),
    "exif": (_encode(rotated, "JPEG", exif=exif), "image/jpeg"),
    "html": (b"<!doctype html><html><body><img src=x.jpg></body></html>", "image/jpeg"),
    "bomb": (_bomb_png(100_000, 100_000), "image/png"),
}
BODIES["wrong-type"] = (BODIES["png"][0], "text/html")
BODIES["truncated"] = (BODIES["jpeg"][0][: len(BODIES["jpeg"][0]) // 2], "image/jpeg")


def _raw_reply(length: int, body: bytes, *headers: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Type: image/jpeg", b"Content-Length: %d" % length, *headers]
    return b"\r\n".join([*head, b"", body])


# Replies that no HTTP framework sends, written as raw bytes by LoopbackServer's second port.
JPEG = BODIES["jpeg"][0]
RAW_REPLIES = {
    "longer": _raw_reply(len(JPEG) - 100, JPEG),  # 100 bytes more than Content-Length
    "longer-close": _raw_reply(len(JPEG) - 100, JPEG, b"Connection: close"),
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "shorter": _raw_reply(len(JPEG) + 100, JPEG),  # the connection closes 100 bytes before Content-Length
}


class LoopbackServer:
    """An aiohttp server on 127.0.0.1 in a background thread, and a raw one (:data:`RAW_REPLIES`) on a second port;
    counts the requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def raw_url(self, name: str) -> str:
        """URL of the raw reply ``name`` of :data:`RAW_REPLIES`."""
        return f"http://127.0.0.1:{self.raw_port}/{name}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("GET", "/{name}", self._handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.raw = self.loop.run_until_complete(asyncio.start_server(self._raw, "127.0.0.1", 0))
        self.raw_port = self.raw.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        """Stop the server and its thread."""

        async def shutdown() -> None:
            self.raw.close()
            await self.runner.cleanup()
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = (await reader.readuntil(b"\r\n\r\n")).split(b" ", 2)[1].decode().strip("/")
        self.hits[f"raw/{name}"] += 1
        writer.write(RAW_REPLIES[name])  # one write: on loopback the client reads the reply in one piece
        await writer.drain()
        writer.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        key = f"{name}?{request.query_string}"
        self.hits[key] += 1
        n = self.hits[key]
        if name in BODIES:
            body, ctype = BODIES[name]
            return web.Response(body=body, content_type=ctype)
        if name == "missing":
            return web.Response(status=404, text="not here")
        if name == "auth":  # the image only with Basic auth user:pw (sent from the URL's userinfo)
            expected = "Basic " + base64.b64encode(b"user:pw").decode()
            if request.headers.get("Authorization") != expected:
                return web.Response(status=401)
            return web.Response(body=BODIES["png"][0], content_type="image/png")
        if name == "flaky":  # 500 first, then the image
            return web.Response(status=500) if n == 1 else web.Response(body=BODIES["jpeg"][0])
        if name == "always-503":
            return web.Response(status=503)
        if name == "rate-limited":  # 429 with Retry-After: 1 first, then the image
            if n == 1:
                return web.Response(status=429, headers={"Retry-After": "1"})
            return web.Response(body=BODIES["png"][0], content_type="image/png")
        if name == "rate-limited-long":
            return web.Response(status=429, headers={"Retry-After": "3600"})
        if name == "drip":  # one byte every 0.2 s: each read is in time, the whole is not
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "200"})
            await resp.prepare(request)
            for _ in range(200):
                await resp.write(b"\xff")
                await asyncio.sleep(0.2)
            return resp
        if name == "never":
            await asyncio.sleep(30)
            return web.Response(status=204)
        if name == "huge":  # no Content-Length: the limit must hold while streaming
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            await resp.prepare(request)
            for _ in range(50):
                await resp.write(b"\0" * 1_000_000)
            return resp
        if name == "huge-declared":
            return web.Response(body=b"\0" * 2_000_000, content_type="image/jpeg")
        if name == "loop":
            raise web.HTTPFound(f"/loop?{n}")
        if name == "to-metadata":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        if name == "to-private":
            raise web.HTTPFound("http://10.0.0.1/x.jpg")
        if name == "to-localhost-name":
            raise web.HTTPFound(f"http://localhost:{self.port}/jpeg")
        if name == "to-file":
            raise web.HTTPFound("file:///etc/passwd")
        if name == "to-bad-punycode":
            raise web.HTTPFound("http://xn--abc-.example/x.jpg")
        if name == "to-jpeg":
            raise web.HTTPMovedPermanently("/jpeg")
        if name == "noai":
            body, ctype = BODIES["jpeg"]
            return web.Response(body=body, content_type=ctype, headers={"X-Robots-Tag": "noindex, noai"})
        if name == "noimageai-for-us":
            body, ctype = BODIES["jpeg"]
            return web.Response(body=body, content_type=ctype, headers={"X-Robots-Tag": "realsyn: noimageai"})
        if name == "noai-for-others":
            body, ctype = BODIES["jpeg"]
            return web.Response(body=body, content_type=ctype, headers={"X-Robots-Tag": "otherbot: noai"})
        return web.Response(status=400)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    """A loopback server for the tests of this module."""
    srv = LoopbackServer()
    yield srv
    srv.stop()


def _summary(r: F.FetchResult) -> tuple[object, ...]:
    return (r.status, r.http_status, r.attempts, r.width, r.height, r.format)


# name -> (status, http_status, attempts, width, height, format)
EXPECTED = {
    "jpeg": (F.OK, 200, 1, 160, 107, "jpeg"),
    "png": (F.OK, 200, 1, 160, 107, "png"),
    "webp": (F.OK, 200, 1, 160, 107, "webp"),
    "gif": (F.OK, 200, 1, 160, 107, "gif"),
    "cmyk": (F.OK, 200, 1, 160, 107, "jpeg"),
    "png16": (F.OK, 200, 1, 48, 32, "png"),
    "exif": (F.OK, 200, 1, 20, 40, "jpeg"),
    "wrong-type": (F.OK, 200, 1, 160, 107, "png"),
    "to-jpeg": (F.OK, 200, 1, 160, 107, "jpeg"),
    "flaky": (F.OK, 200, 2, 160, 107, "jpeg"),
    "rate-limited": (F.OK, 200, 2, 160, 107, "png"),
    "noai-for-others": (F.OK, 200, 1, 160, 107, "jpeg"),
    "missing": (F.HTTP_ERROR, 404, 1, None, None, None),
    "always-503": (F.HTTP_ERROR, 503, 2, None, None, None),
    "rate-limited-long": (F.HTTP_ERROR, 429, 1, None, None, None),
    "drip": (F.TIMEOUT, None, 2, None, None, None),
    "never": (F.TIMEOUT, None, 2, None, None, None),
    "huge": (F.TOO_LARGE, 200, 1, None, None, None),
    "huge-declared": (F.TOO_LARGE, 200, 1, None, None, None),
    "loop": (F.TOO_MANY_REDIRECTS, None, 1, None, None, None),
    "to-metadata": (F.BLOCKED, None, 1, None, None, None),
    "to-private": (F.BLOCKED, None, 1, None, None, None),
    "to-file": (F.BLOCKED, None, 1, None, None, None),
    "truncated": (F.DECODE_ERROR, 200, 1, None, None, None),
    "html": (F.NOT_AN_IMAGE, 200, 1, None, None, None),
    "bomb": (F.TOO_MANY_PIXELS, 200, 1, None, None, None),
    "noai": (F.OPTED_OUT, 200, 1, None, None, None),
    "noimageai-for-us": (F.OPTED_OUT, 200, 1, None, None, None),
}
RETRYABLE = {"always-503", "rate-limited-long", "drip", "never"}


# Every image decoded on the event loop (the default for these small ones), or every one in a decode thread.
@pytest.mark.parametrize("inline_decode_pixels", [OPTS.inline_decode_pixels, 0])
def test_every_endpoint_ends_in_its_status_within_its_timeout(
    server: LoopbackServer, inline_decode_pixels: int
) -> None:
    names = sorted(EXPECTED)
    tag = f"inline{inline_decode_pixels}"  # own query string: the endpoints that count their hits start afresh
    before = Counter(server.hits)
    started = time.monotonic()
    opts = replace(OPTS, inline_decode_pixels=inline_decode_pixels)
    results = F.fetch_batch([server.url(f"/{n}?{tag}") for n in names], opts)
    took = time.monotonic() - started

    assert {n: _summary(r) for n, r in zip(names, results, strict=True)} == EXPECTED
    assert {n for n, r in zip(names, results, strict=True) if r.retryable} == RETRYABLE
    # All in parallel: the slowest is two attempts of the 1.5 s total timeout, plus backoff.
    assert took < 5.0
    by_name = dict(zip(names, results, strict=True))
    for name in ("jpeg", "png", "webp", "gif", "cmyk", "png16", "exif"):
        r = by_name[name]
        assert (r.content, r.image_id, r.n_bytes) == (BODIES[name][0], bytes_id(BODIES[name][0]), len(BODIES[name][0]))
    assert all(r.content is None and r.image_id is None for n, r in by_name.items() if EXPECTED[n][0] != F.OK)
    # Retry-After: 1 was honoured before the second attempt.
    assert by_name["rate-limited"].elapsed_ms >= 1000
    assert "Retry-After 3600" in (by_name["rate-limited-long"].error or "")
    assert by_name["never"].elapsed_ms < 2 * 1500 + 500
    # Redirects to refused places never left this machine: the refusal came before any connection.
    assert "169.254.169.254" in (by_name["to-metadata"].error or "")
    assert "link-local" in (by_name["to-metadata"].error or "")
    assert "private" in (by_name["to-private"].error or "")
    hits = Counter(server.hits)
    hits.subtract(before)
    assert hits[f"loop?{tag}"] == 1 and sum(v for k, v in hits.items() if k.startswith("loop")) == 4


def test_loopback_is_refused_without_the_allow_list(server: LoopbackServer) -> None:
    opts = replace(OPTS, allow_networks=())
    before = server.hits["jpeg?refused"]
    results = F.fetch_batch(
        [server.url("/jpeg?refused"), f"http://localhost:{server.port}/jpeg?refused", "http://[::1]:9/x.jpg"], opts
    )
    assert [(r.status, r.retryable, r.attempts) for r in results] == [(F.BLOCKED, False, 1)] * 3
    assert "loopback" in (results[0].error or "") and "loopback" in (results[1].error or "")
    assert server.hits["jpeg?refused"] == before  # not a single request reached the server
    # A redirect to a host name is checked on the name's resolved address.
    allowed = F.fetch_batch([server.url("/to-localhost-name")], OPTS)
    assert [r.status for r in allowed] == [F.OK]


def test_a_reply_that_is_not_valid_http_is_a_malformed_response(server: LoopbackServer) -> None:
    names = sorted(RAW_REPLIES)
    before = Counter(server.hits)
    results = dict(zip(names, F.fetch_batch([server.raw_url(n) for n in names], OPTS), strict=True))
    assert {n: (r.status, r.retryable, r.attempts) for n, r in results.items()} == {
        "longer": (F.MALFORMED_RESPONSE, False, 1),
        "longer-close": (F.MALFORMED_RESPONSE, False, 1),
        "not-http": (F.MALFORMED_RESPONSE, False, 1),
        # A body cut short looks like a connection dropped mid-transfer: retried.
        "shorter": (F.CONNECTION_ERROR, True, OPTS.max_attempts),
    }
    hits = Counter(server.hits)
    hits.subtract(before)
    assert {n: hits[f"raw/{n}"] for n in names} == {n: results[n].attempts for n in names}
    for name in ("longer", "longer-close"):
        error = results[name].error or ""
        assert error.startswith("invalid HTTP response: ") and "Content-Length" in error and len(error) < 200
    assert "content length" in (results["shorter"].error or "")


@pytest.mark.parametrize(
    "url", ["http://xn--/a.jpg", "http://xn--abc-.example/x.jpg", "https://a.xn--zz.example/x.jpg", "to-bad-punycode"]
)
def test_a_host_that_is_not_valid_punycode_is_an_invalid_url(
    server: LoopbackServer, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[str] = []

    def getaddrinfo(host: str, *args: object) -> list[object]:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    url = url if "://" in url else server.url(f"/{url}")  # a redirect to such a host
    (result,) = F.fetch_batch([url], OPTS)
    assert (result.status, result.retryable, result.attempts) == (F.INVALID_URL, False, 1)
    assert "xn--" in (result.error or "") and "not valid IDNA" in (result.error or "")
    assert looked_up == []  # refused before any DNS lookup


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "not-global"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_blocked_reason(address: str, reason: str | None) -> None:
    assert F.blocked_reason(address) == reason


def test_allow_list_overrides_the_rules() -> None:
    allow = F.parse_networks(["10.0.0.0/8"])
    assert (F.blocked_reason("10.9.9.9", allow), F.blocked_reason("192.168.0.1", allow)) == (None, "private")


def test_files_data_uris_and_fsspec(tmp_path: Path) -> None:
    jpeg, png = BODIES["jpeg"][0], BODIES["png"][0]
    (tmp_path / "a b.jpg").write_bytes(jpeg)
    (tmp_path / "page.html").write_bytes(BODIES["html"][0])
    with fsspec.open("memory://realsyn-test/img.png", "wb") as f:
        f.write(png)
    urls = [
        str(tmp_path / "a b.jpg"),
        (tmp_path / "a b.jpg").as_uri(),
        str(tmp_path / "missing.jpg"),
        (tmp_path / "page.html").as_uri(),
        "data:image/png;base64," + base64.b64encode(png).decode(),
        "data:image/png;base64,@@@",
        "memory://realsyn-test/img.png",
        "memory://realsyn-test/absent.png",
        "ftp://example.org/x.jpg",
        "file://otherhost/etc/x.jpg",
        "",
        "not a url at all",
        "relative/a b.jpg",
        "http://[::1/x",
        "javascript:alert(1)",
    ]
    opts = replace(OPTS, file_roots=(str(tmp_path),), object_prefixes=("memory://realsyn-test",))
    results = F.fetch_batch(urls, opts)
    assert [(r.status, r.image_id, r.format) for r in results] == [
        (F.OK, bytes_id(jpeg), "jpeg"),
        (F.OK, bytes_id(jpeg), "jpeg"),
        (F.NOT_FOUND, None, None),
        (F.NOT_AN_IMAGE, None, None),
        (F.OK, bytes_id(png), "png"),
        (F.INVALID_URL, None, None),
        (F.OK, bytes_id(png), "png"),
        (F.NOT_FOUND, None, None),
        (F.BLOCKED, None, None),
        (F.BLOCKED, None, None),
        (F.INVALID_URL, None, None),
        (F.INVALID_URL, None, None),
        (F.INVALID_URL, None, None),
        (F.INVALID_URL, None, None),
        (F.BLOCKED, None, None),
    ]


def test_local_files_and_objects_are_refused_without_roots_and_prefixes(tmp_path: Path) -> None:
    # The scheme alone is not enough: files need file_roots, object stores a listed bucket or prefix.
    (tmp_path / "a.jpg").write_bytes(BODIES["jpeg"][0])
    with fsspec.open("memory://realsyn-test/img.png", "wb") as f:
        f.write(BODIES["png"][0])
    with fsspec.open("memory://other-bucket/secret.png", "wb") as f:
        f.write(BODIES["png"][0])
    urls = [
        (tmp_path / "a.jpg").as_uri(),
        str(tmp_path / "a.jpg"),
        "file:///etc/passwd",
        "/dev/zero",
        "memory://realsyn-test/img.png",
    ]
    results = F.fetch_batch(urls, OPTS)
    assert [(r.status, r.content) for r in results] == [(F.BLOCKED, None)] * 5
    assert "file_roots" in (results[0].error or "") and "object_prefixes" in (results[4].error or "")
    opts = replace(OPTS, file_roots=(str(tmp_path),), object_prefixes=("memory://realsyn-test/",))
    urls += [
        "memory://other-bucket/secret.png",
        "memory://realsyn-test-2/secret.png",
        "memory://realsyn-test/../other-bucket/secret.png",
    ]
    statuses = [r.status for r in F.fetch_batch(urls, opts)]
    assert statuses == [F.OK, F.OK, F.BLOCKED, F.BLOCKED, F.OK, F.BLOCKED, F.BLOCKED, F.BLOCKED]


def test_a_fifo_read_ends_as_timeout_within_the_limit(tmp_path: Path) -> None:
    fifo = tmp_path / "never.jpg"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes, which never happens
    opts = replace(OPTS, file_roots=(str(tmp_path),), total_timeout_s=1.0)
    started = time.monotonic()
    [r] = F.fetch_batch([fifo.as_uri()], opts)
    assert (r.status, r.attempts, r.retryable) == (F.TIMEOUT, 1, False)
    assert time.monotonic() - started < 1.0 + 0.5


def test_file_roots_and_size_limit(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.jpg").write_bytes(BODIES["jpeg"][0])
    (outside / "b.jpg").write_bytes(BODIES["jpeg"][0])
    (inside / "link.jpg").symlink_to(outside / "b.jpg")
    opts = replace(OPTS, file_roots=(str(inside),), max_bytes=len(BODIES["jpeg"][0]) + 10)
    (inside / "big.png").write_bytes(BODIES["png"][0])
    results = F.fetch_batch(
        [str(inside / n) for n in ("a.jpg", "link.jpg", "big.png")] + [str(outside / "b.jpg")], opts
    )
    assert [r.status for r in results] == [F.OK, F.BLOCKED, F.TOO_LARGE, F.BLOCKED]
    no_files = replace(opts, allowed_schemes=("http", "https"))
    assert [r.status for r in F.fetch_batch([str(inside / "a.jpg")], no_files)] == [F.BLOCKED]


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 API on loopback (moto's server), and fsspec configured to use it for s3:// and s3a:// URLs."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for protocol in ("s3", "s3a"):  # as FSSPEC_S3_ENDPOINT_URL=... in the environment would
        monkeypatch.setitem(fsspec.config.conf, protocol, {"endpoint_url": endpoint})
    yield endpoint
    server.stop()


def check_object_store(fs: fsspec.AbstractFileSystem, schemes: tuple[str, ...]) -> None:
    """Fetch what ``fs`` puts in a bucket: the image under every scheme of ``schemes``, the rest under the first.

    An image comes back with its content id; too large, not an image and missing (object or bucket) are final.
    """
    jpeg, png = BODIES["jpeg"][0], BODIES["png"][0]
    fs.mkdir("realsyn-test")
    fs.mkdir("private-bucket")
    fs.pipe({"realsyn-test/photos/a b.jpg": jpeg, "realsyn-test/big.png": png, "realsyn-test/page.html": b"<html>"})
    fs.pipe({"private-bucket/a.jpg": jpeg})
    scheme = schemes[0]
    urls = [f"{s}://realsyn-test/photos/a b.jpg" for s in schemes] + [
        f"{scheme}://realsyn-test/big.png",
        f"{scheme}://realsyn-test/page.html",
        f"{scheme}://realsyn-test/absent.jpg",
        f"{scheme}://no-such-bucket/a.jpg",
        f"{scheme}://private-bucket/a.jpg",  # exists, readable with these credentials, but not listed
    ]
    prefixes = (*(f"{s}://realsyn-test" for s in schemes), f"{scheme}://no-such-bucket/")
    results = F.fetch_batch(urls, replace(OPTS, max_bytes=len(png) - 1, object_prefixes=prefixes))
    assert [(r.status, r.image_id, r.format) for r in results] == [(F.OK, bytes_id(jpeg), "jpeg")] * len(schemes) + [
        (F.TOO_LARGE, None, None),
        (F.NOT_AN_IMAGE, None, None),
        (F.NOT_FOUND, None, None),
        (F.NOT_FOUND, None, None),
        (F.BLOCKED, None, None),
    ]
    assert results[0].content == jpeg and not any(r.retryable for r in results)


def test_s3_objects(s3_endpoint: str) -> None:
    import s3fs

    check_object_store(s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True), ("s3", "s3a"))


@pytest.fixture
def gcs_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Google Cloud Storage JSON API on loopback (gcp-storage-emulator), and fsspec's gs:// configured for it."""
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as probe:  # a free port: the emulator does not report the one it was given
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # As FSSPEC_GS_ENDPOINT_URL and FSSPEC_GS_TOKEN in the environment would.
    monkeypatch.setitem(fsspec.config.conf, "gs", {"endpoint_url": endpoint, "token": "anon"})
    yield endpoint
    server.stop()


def test_gcs_objects(gcs_endpoint: str) -> None:
    import gcsfs

    check_object_store(gcsfs.GCSFileSystem(endpoint_url=gcs_endpoint, token="anon", skip_instance_cache=True), ("gs",))


def test_dbfs_references_read_from_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jpeg = BODIES["jpeg"][0]
    (tmp_path / "FileStore" / "photos").mkdir(parents=True)
    (tmp_path / "FileStore" / "photos" / "a.jpg").write_bytes(jpeg)
    monkeypatch.setattr(F, "DBFS_MOUNT", str(tmp_path))  # as /dbfs on a Databricks node
    urls = ["dbfs:/FileStore/photos/a.jpg", "dbfs:///FileStore/photos/a.jpg", "dbfs:/FileStore/absent.jpg"]
    results = F.fetch_batch(urls, replace(OPTS, object_prefixes=("dbfs:/FileStore/",)))
    assert [(r.status, r.image_id) for r in results] == [
        (F.OK, bytes_id(jpeg)),
        (F.OK, bytes_id(jpeg)),
        (F.NOT_FOUND, None),
    ]


def test_content_to_files(tmp_path: Path) -> None:
    jpeg = BODIES["jpeg"][0]
    (tmp_path / "a.jpg").write_bytes(jpeg)
    opts = replace(OPTS, content_prefix=str(tmp_path / "store"), file_roots=(str(tmp_path),))
    [r] = F.fetch_batch([str(tmp_path / "a.jpg")], opts)
    image_id = bytes_id(jpeg)
    assert (r.status, r.content, r.content_path) == (F.OK, None, f"{tmp_path}/store/{image_id[:2]}/{image_id}.jpg")
    assert Path(r.content_path).read_bytes() == jpeg


def test_same_content_from_many_threads_at_once(tmp_path: Path) -> None:
    # The same image at many URLs: every writer must succeed and leave one whole file, no temporary ones.
    jpeg = BODIES["jpeg"][0]
    image_id = bytes_id(jpeg)
    for round_ in range(5):
        prefix = str(tmp_path / f"store{round_}")
        start = threading.Barrier(16)

        def write(_: int, prefix: str = prefix, start: threading.Barrier = start) -> str:
            start.wait()
            return F.store_content(prefix, image_id, "JPEG", jpeg)

        with ThreadPoolExecutor(16) as pool:
            paths = set(pool.map(write, range(16)))
        assert paths == {f"{prefix}/{image_id[:2]}/{image_id}.jpg"}
        assert Path(paths.pop()).read_bytes() == jpeg
        assert [p.name for p in (tmp_path / f"store{round_}" / image_id[:2]).iterdir()] == [f"{image_id}.jpg"]


def test_fetch_arrow_keeps_keys_and_schema(server: LoopbackServer) -> None:
    batch = pa.RecordBatch.from_pydict(
        {"url_id": ["a", "b", "c"], "url": [server.url("/png"), server.url("/missing"), server.url("/gif")]}
    )
    reports: list[str] = []
    out = pa.Table.from_batches(
        list(F.fetch_arrow([batch], OPTS, rows_per_batch=2, progress=lambda p: reports.append(p.line())))
    )
    assert out.schema == ARROW_SCHEMA
    rows = sorted(
        zip(out["url_id"].to_pylist(), out["status"].to_pylist(), out["http_status"].to_pylist(), strict=True)
    )
    assert rows == [("a", F.OK, 200), ("b", F.HTTP_ERROR, 404), ("c", F.OK, 200)]
    png, gif = len(BODIES["png"][0]), len(BODIES["gif"][0])
    assert reports[-1].startswith("fetched 3: ok 2, failed 1, ") and f"{(png + gif) / 1e6:,.1f} MB" in reports[-1]


def test_credentials_are_used_for_the_fetch_and_never_stored(server: LoopbackServer) -> None:
    signed = "?X-Amz-Signature=s3cr3tsig&w=1&token=t0ken"
    urls = {
        "auth": server.url("/auth" + signed).replace("http://", "http://user:pw@"),
        "timeout": server.url("/never" + signed).replace("http://", "http://user:pw@"),
        "plain": server.url("/png"),
    }
    batch = pa.RecordBatch.from_pydict({"url_id": list(urls), "url": list(urls.values())})
    out = {r["url_id"]: r for r in pa.Table.from_batches(list(F.fetch_arrow([batch], OPTS))).to_pylist()}
    assert out["auth"]["status"] == F.OK  # the userinfo reached the server as Basic auth
    assert out["auth"]["url"] == server.url("/auth?w=1")
    assert out["timeout"]["status"] == F.TIMEOUT
    assert out["plain"]["url"] == urls["plain"]
    stored = repr(sorted(out.items()))
    for secret in ("user:pw", "s3cr3tsig", "t0ken"):
        assert secret not in stored

    refused = replace(OPTS, credentials_in_url="refuse")
    before = server.hits["auth?"]
    (result,) = F.fetch_batch([server.url("/auth").replace("http://", "http://user:pw@")], refused)
    assert result.status == F.CREDENTIALS_IN_URL and result.attempts == 1
    assert server.hits["auth?"] == before  # refused before any connection
    (result,) = F.fetch_batch([server.url("/png")], refused)
    assert result.status == F.OK


def test_helpers() -> None:
    assert F.parse_retry_after("7") == 7.0
    assert (
        F.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", F.datetime(2015, 10, 21, 7, 27, 30, tzinfo=F.timezone.utc))
        == 30.0
    )
    assert F.parse_retry_after("soon") is None
    assert F.opted_out(["noindex, NoAI"], "realsyn", ["noai"]) is True
    assert F.opted_out(["googlebot: noai"], "realsyn", ["noai"]) is False
    assert F.opted_out(["realsyn: noai"], "realsyn", ["noai"]) is True
    assert F.opted_out(["noindex"], "realsyn", ["noai", "noimageai"]) is False
    assert [F.is_transient(s, h) for s, h in [(F.TIMEOUT, None), (F.HTTP_ERROR, 429), (F.HTTP_ERROR, 502)]] == [
        True
    ] * 3
    assert [F.is_transient(s, h) for s, h in [(F.HTTP_ERROR, 404), (F.BLOCKED, None), (F.DNS_ERROR, None)]] == [
        False
    ] * 3


CHINA = Image.fromarray(load_sample_image("china.jpg"))  # 640 x 427: large enough to be decoded at 1/8 scale


@pytest.mark.parametrize(("mode", "progressive"), [("RGB", False), ("RGB", True), ("CMYK", False)])
def test_reduced_scale_jpeg_check_still_reads_the_whole_stream(mode: str, progressive: bool) -> None:
    data = _encode(CHINA.convert(mode), "JPEG", quality=90, progressive=progressive)
    assert F.validate_image(data, 50_000_000) == F.ImageCheck(F.OK, None, 640, 427, "JPEG")
    # Cut in the first half, in the last rows of entropy-coded data, and only the end-of-image marker missing.
    for cut in (len(data) // 3, len(data) - 64, len(data) - 2):
        check = F.validate_image(data[:cut], 50_000_000)
        assert (check.status, check.format) == (F.DECODE_ERROR, "JPEG"), cut
        assert "truncated" in (check.error or ""), cut


@pytest.mark.parametrize("bits", [8, 16])
def test_truncated_png_is_a_decode_error(bits: int) -> None:
    img = CHINA if bits == 8 else Image.fromarray(np.asarray(CHINA.convert("L"), dtype=np.uint16) * 257)
    data = _encode(img, "PNG")
    assert F.validate_image(data, 50_000_000) == F.ImageCheck(F.OK, None, 640, 427, "PNG")
    for cut in (len(data) // 2, len(data) - 100):  # both inside the compressed image data
        check = F.validate_image(data[:cut], 50_000_000)
        assert (check.status, check.format) == (F.DECODE_ERROR, "PNG"), cut


def test_status_counts() -> None:
    rows = [
        {"url_id": "a", "url": "u1", "status": F.OK, "n_bytes": 10},
        {"url_id": "b", "url": "u2", "status": F.HTTP_ERROR, "http_status": 404},
        {"url_id": "c", "url": "u3", "status": F.OK, "n_bytes": 5},
    ]
    counts: dict[str, list[int]] = {}
    F.count_statuses(pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA), counts)
    assert counts == {F.OK: [2, 15], F.HTTP_ERROR: [1, 0]}
    param = F.StatusCounts()
    total = param.addInPlace(param.zero({}), counts)
    assert param.addInPlace(total, {F.OK: [1, 7], F.TIMEOUT: [1, 0]}) == {
        F.OK: [3, 22],
        F.HTTP_ERROR: [1, 0],
        F.TIMEOUT: [1, 0],
    }


def test_images_under_the_pixel_limit_but_huge_decoded_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # 81M pixels pass max_pixels (89.5M), but the decoded PNG would take ~324 MB.
    big = Image.new("RGB", (9000, 9000), (10, 20, 30))
    png, jpeg = _encode(big, "PNG"), _encode(big, "JPEG")
    check = F.validate_image(png, 89_478_485)
    assert (check.status, check.width, check.height, check.format) == (F.TOO_MANY_PIXELS, 9000, 9000, "PNG")
    assert "324 MB > 134 MB" in (check.error or "")
    # A JPEG is checked at 1/8 scale (~5 MB) and passes; a higher bound lets the PNG through too.
    assert F.validate_image(jpeg, 89_478_485) == F.ImageCheck(F.OK, None, 9000, 9000, "JPEG")
    assert F.validate_image(png, 89_478_485, max_decoded_bytes=400_000_000).status == F.OK
    # A refused image's size is as displayed, as an accepted one's is: EXIF orientation 6 turns 9000x4000 upright.
    turned = io.BytesIO()
    Image.new("RGB", (9000, 4000), (10, 20, 30)).save(turned, "PNG", exif=exif)
    check = F.validate_image(turned.getvalue(), 89_478_485, max_decoded_bytes=100_000_000)
    assert (check.status, check.width, check.height) == (F.TOO_MANY_PIXELS, 4000, 9000)
    # The refusal decodes nothing (the header check too: Pillow's PNG EXIF lookup would decode the whole image).
    from PIL import PngImagePlugin

    def no_decode(self: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    assert F.validate_image(png, 89_478_485).status == F.TOO_MANY_PIXELS
