"""udfs.fetch end to end: against a real HTTP server on loopback that serves good, broken and hostile answers, and
on files, data: URIs and object stores."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from realsyn.ids import bytes_id
from tests.support.loopback import BODIES, OPTS, RAW_REPLIES, LoopbackServer
from tests.support.photos import encode, photo
from udfs import fetch as F
from udfs import readers
from udfs.fetch_arrow import fetch_arrow
from udfs.images import phash


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


def test_an_accepted_image_holds_the_perceptual_hash_of_its_bytes_within_the_quality_bounds(tmp_path: Path) -> None:
    jpeg, png = BODIES["jpeg"][0], encode(photo("coffee").resize((300, 200)))
    small, strip = encode(photo("coffee").resize((90, 60))), encode(photo("coffee").resize((600, 150)))
    urls = ["data:image/jpeg;base64," + base64.b64encode(c).decode() for c in (jpeg, png, small, strip)]
    urls.append(str(tmp_path / "absent.png"))
    opts = replace(OPTS, file_roots=(str(tmp_path),), perceptual_hash=True)
    hashed = F.fetch_batch(urls, replace(opts, hash_min_short_side=100, hash_max_aspect_ratio=3.0))
    # The JPEG is 160 x 107; the 90 x 60 image is under the shorter side, the 600 x 150 one over the aspect ratio:
    # image extraction drops both at its quality filter, so they are fetched ok but not hashed.
    assert [r.status for r in hashed] == [F.OK, F.OK, F.OK, F.OK, F.NOT_FOUND]
    assert [r.phash for r in hashed] == [phash(jpeg), phash(png), None, None, None]
    assert phash(jpeg) is not None and phash(jpeg) != phash(png)
    # Without bounds every accepted image is hashed; off, none is, and the rest of each row is the same.
    unbounded = F.fetch_batch(urls, opts)
    assert [r.phash for r in unbounded] == [phash(jpeg), phash(png), phash(small), phash(strip), None]
    unhashed = F.fetch_batch(urls, replace(opts, perceptual_hash=False))
    assert [r.phash for r in unhashed] == [None] * 5
    assert [(r.status, r.image_id, r.width) for r in unhashed] == [(r.status, r.image_id, r.width) for r in hashed]


def test_empty_content_and_unreadable_files_end_in_their_status(tmp_path: Path) -> None:
    opts = replace(OPTS, file_roots=(str(tmp_path),))
    empty, folder = F.fetch_batch(["data:image/png;base64,", str(tmp_path)], opts)
    assert (empty.status, empty.error, empty.retryable) == (F.NOT_AN_IMAGE, "not a recognised image format", False)
    assert (folder.status, folder.retryable) == (F.IO_ERROR, False)
    assert (folder.error or "").startswith("IsADirectoryError: ")


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
    monkeypatch.setattr(readers, "DBFS_MOUNT", str(tmp_path))  # as /dbfs on a Databricks node
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


def test_credentials_are_used_for_the_fetch_and_never_stored(server: LoopbackServer) -> None:
    signed = "?X-Amz-Signature=s3cr3tsig&w=1&token=t0ken"
    urls = {
        "auth": server.url("/auth" + signed).replace("http://", "http://user:pw@"),
        "timeout": server.url("/never" + signed).replace("http://", "http://user:pw@"),
        "plain": server.url("/png"),
    }
    batch = pa.RecordBatch.from_pydict({"url_id": list(urls), "url": list(urls.values())})
    out = {r["url_id"]: r for r in pa.Table.from_batches(list(fetch_arrow([batch], OPTS))).to_pylist()}
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


def test_is_transient() -> None:
    assert [F.is_transient(s, h) for s, h in [(F.TIMEOUT, None), (F.HTTP_ERROR, 429), (F.HTTP_ERROR, 502)]] == [
        True
    ] * 3
    assert [F.is_transient(s, h) for s, h in [(F.HTTP_ERROR, 404), (F.BLOCKED, None), (F.DNS_ERROR, None)]] == [
        False
    ] * 3
