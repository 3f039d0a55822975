"""For the tests of the fetcher: a loopback HTTP server that serves good, broken and hostile answers (its bodies
and raw replies), and fetch options with small timeouts that allow loopback addresses."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import zlib
from collections import Counter

import numpy as np
from aiohttp import web
from PIL import Image
from sklearn.datasets import load_sample_image

from tests.support.photos import encode
from udfs.fetch_schema import DEFAULT_SCHEMES, FetchOptions

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
    "jpeg": (encode(PHOTO, "JPEG", quality=85), "image/jpeg"),
    "png": (encode(PHOTO, "PNG"), "image/png"),
    "webp": (encode(PHOTO, "WEBP"), "image/webp"),
    "gif": (encode(PHOTO.convert("P"), "GIF"), "image/gif"),
    "cmyk": (encode(PHOTO.convert("CMYK"), "JPEG"), "image/jpeg"),
    "png16": (encode(Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40), "PNG"), "image/png"),
    "exif": (encode(rotated, "JPEG", exif=exif), "image/jpeg"),
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
