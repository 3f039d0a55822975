"""The fetch stage on local Spark + Delta: bronze.image_refs -> bronze.fetched_images, rerun and --retry-failed."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import deltalake
import pytest
from PIL import Image

from jobs.fetch import main as fetch_job
from realsyn.config_sections import Config, ExtractImagesConfig, FetchConfig, StorageConfig
from realsyn.contracts import BRONZE_FETCHED_IMAGES, BRONZE_IMAGE_REFS
from realsyn.ids import bytes_id, stable_id
from realsyn.stages.fetch import fetch_options, run_fetch
from realsyn.tables import Lakehouse
from udfs.fetch import STATUSES
from udfs.fetch_schema import FetchOptions

REFS_SCHEMA = (
    "doc_id string, position int, url string, url_id string, alt_text string, "
    "matched_text_index int, matched_sim double, meta string"
)


def _jpeg(shade: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, 90)).save(buf, "JPEG")
    return buf.getvalue()


IMAGES = {"/a.jpg": _jpeg(10, (120, 80)), "/b.jpg": _jpeg(200, (64, 64))}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        if self.path in IMAGES or (self.path == "/unstable" and not self.server.unstable):
            body = IMAGES.get(self.path, IMAGES["/b.jpg"])
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(503 if self.path == "/unstable" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: Counter[str] = Counter()
        self.unstable = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    """A loopback HTTP server: two images, a 404, a 503 until switched, a redirect to the metadata address."""
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _config(storage: StorageConfig, **fetch: Any) -> Config:
    base: dict[str, Any] = {
        "allow_networks": ["127.0.0.0/8"],  # the test server; refused by default
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 2.0,
        "max_attempts": 2,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.1,
        "tasks": 2,
    }
    return Config(storage=storage, fetch=FetchConfig(**{**base, **fetch}))


def _write_refs(lakehouse: Lakehouse, urls: list[tuple[str, int, str]]) -> None:
    rows = [(doc, pos, url, stable_id(url), None, None, None, None) for doc, pos, url in urls]
    lakehouse.insert_new(BRONZE_IMAGE_REFS, lakehouse.spark.createDataFrame(rows, REFS_SCHEMA))


def _table(lakehouse: Lakehouse) -> dict[str, tuple[Any, ...]]:
    cols = ["url", "status", "http_status", "retryable", "attempts", "image_id", "width", "height", "format"]
    return {r["url_id"]: tuple(r[c] for c in cols) for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()}


def _another(name: str, value: Any) -> Any:
    """A valid value of fetch setting ``name`` other than ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str) and name != "credentials_in_url":
        return value + "x"
    other = {
        "allow_networks": ["10.0.0.0/8"],
        "object_prefixes": ["s3://bucket/images/"],
        "credentials_in_url": "refuse",
    }
    return other.get(name, [*value, "/data"])


def test_every_fetch_setting_reaches_the_fetcher_and_the_defaults_agree() -> None:
    assert fetch_options(FetchConfig()) == FetchOptions()
    # Every option but those the fetcher sizes itself (thread pools) or the stage resolves (content_prefix) comes
    # from a config key: changed there, it arrives changed.
    internal = {"content_prefix", "dns_threads", "io_threads", "decode_threads"}
    internal |= {"perceptual_hash", "hash_min_short_side", "hash_max_aspect_ratio"}  # extract_images' settings
    changed = {
        f.name: _another(f.name, getattr(FetchOptions(), f.name))
        for f in dataclasses.fields(FetchOptions)
        if f.name not in internal
    }
    options = fetch_options(FetchConfig(**changed), content_prefix="/tmp/images")
    assert {name: getattr(options, name) for name in changed} == {
        name: tuple(v) if isinstance(v, list) else v for name, v in changed.items()
    }
    assert options.content_prefix == "/tmp/images"
    # The perceptual hash is stored for extract_images' perceptual dedup, of the images its quality filter keeps.
    images = ExtractImagesConfig(min_short_side=150, max_aspect_ratio=2.5)
    hashing = fetch_options(FetchConfig(), images=images)
    assert (hashing.perceptual_hash, hashing.hash_min_short_side, hashing.hash_max_aspect_ratio) == (True, 150, 2.5)
    off = images.model_copy(update={"perceptual_dedup": images.perceptual_dedup.model_copy(update={"enabled": False})})
    assert fetch_options(FetchConfig(), images=off) == FetchOptions()
    assert fetch_options(FetchConfig(perceptual_hash=False), images=images) == FetchOptions()


def test_fetch_rerun_and_retry_failed(lakehouse: Lakehouse, server: _Server, tmp_path: Path) -> None:
    local = tmp_path / "c.jpg"
    local.write_bytes(IMAGES["/b.jpg"])
    a, b, missing, unstable = (server.url(p) for p in ("/a.jpg", "/b.jpg", "/missing", "/unstable"))
    metadata, file_uri, absent = server.url("/to-metadata"), local.as_uri(), (tmp_path / "absent.jpg").as_uri()
    _write_refs(
        lakehouse,
        [
            *[("d1", 0, a), ("d1", 1, b), ("d2", 0, a), ("d2", 1, missing), ("d2", 2, unstable)],
            *[("d3", 0, metadata), ("d3", 1, file_uri), ("d3", 2, absent)],
        ],
    )
    # 7 distinct URLs: two commit batches. Local files are read under file_roots only.
    cfg = _config(lakehouse.storage, commit_every=4, file_roots=[str(tmp_path)])

    summary = run_fetch(lakehouse, cfg)

    id_a, id_b = bytes_id(IMAGES["/a.jpg"]), bytes_id(IMAGES["/b.jpg"])
    expected = {
        stable_id(a): (a, "ok", 200, False, 1, id_a, 120, 80, "jpeg"),
        stable_id(b): (b, "ok", 200, False, 1, id_b, 64, 64, "jpeg"),
        stable_id(missing): (missing, "http_error", 404, False, 1, None, None, None, None),
        stable_id(unstable): (unstable, "http_error", 503, True, 2, None, None, None, None),
        stable_id(metadata): (metadata, "blocked", None, False, 1, None, None, None, None),
        stable_id(file_uri): (file_uri, "ok", None, False, 1, id_b, 64, 64, "jpeg"),
        stable_id(absent): (absent, "not_found", None, False, 1, None, None, None, None),
    }
    assert _table(lakehouse) == expected
    assert (summary.pending, summary.by_status) == (7, {"ok": 3, "http_error": 2, "blocked": 1, "not_found": 1})
    assert summary.bytes == len(IMAGES["/a.jpg"]) + 2 * len(IMAGES["/b.jpg"])
    content = {r["url_id"]: r["content"] for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()}
    assert content[stable_id(a)] == IMAGES["/a.jpg"] and content[stable_id(file_uri)] == IMAGES["/b.jpg"]
    assert server.hits == Counter({"/a.jpg": 1, "/b.jpg": 1, "/missing": 1, "/unstable": 2, "/to-metadata": 1})

    # A rerun has nothing to do: no request, no commit.
    version = lakehouse.delta(BRONZE_FETCHED_IMAGES).history(1).collect()[0]["version"]
    assert run_fetch(lakehouse, cfg).pending == 0
    assert lakehouse.delta(BRONZE_FETCHED_IMAGES).history(1).collect()[0]["version"] == version
    assert sum(server.hits.values()) == 6

    # --retry-failed refetches the transient failure only, and replaces its row.
    server.unstable = False
    retried = run_fetch(lakehouse, cfg, retry_failed=True)
    assert (retried.pending, retried.by_status) == (1, {"ok": 1})
    assert _table(lakehouse) == {**expected, stable_id(unstable): (unstable, "ok", 200, False, 1, id_b, 64, 64, "jpeg")}
    assert server.hits == Counter({"/a.jpg": 1, "/b.jpg": 1, "/missing": 1, "/unstable": 3, "/to-metadata": 1})

    # Readable without Spark, by the deltalake package.
    dl = deltalake.DeltaTable(lakehouse.location(BRONZE_FETCHED_IMAGES)).to_pyarrow_table()
    assert sorted(zip(dl["url_id"].to_pylist(), dl["status"].to_pylist(), strict=True)) == sorted(
        (k, v[1]) for k, v in _table(lakehouse).items()
    )


def test_job_refuses_loopback_by_default_and_stores_files(
    lakehouse: Lakehouse, server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = tmp_path / "c.jpg"
    local.write_bytes(IMAGES["/a.jpg"])
    _write_refs(lakehouse, [("d1", 0, server.url("/a.jpg")), ("d1", 1, local.as_uri())])
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"storage:\n  root: {lakehouse.storage.root}\n", encoding="utf-8")
    fetch_job(
        [
            *["--conf", str(conf), "--set", "fetch.tasks=1", "--set", "fetch.content_store=files"],
            *["--set", f"fetch.file_roots=[{tmp_path}]"],
        ]
    )

    assert "2 of 2 pending URLs fetched" in capsys.readouterr().out
    rows = {r["url"]: r for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()}
    blocked = rows[server.url("/a.jpg")]
    assert (blocked["status"], blocked["retryable"]) == ("blocked", False)
    assert "loopback" in blocked["error"] and server.hits["/a.jpg"] == 0  # refused before connecting
    image_id = bytes_id(IMAGES["/a.jpg"])
    stored = rows[local.as_uri()]
    path = f"{lakehouse.location(BRONZE_FETCHED_IMAGES)}_files/{image_id[:2]}/{image_id}.jpg"
    assert (stored["status"], stored["image_id"], stored["content"], stored["content_path"]) == (
        "ok",
        image_id,
        None,
        path,
    )
    assert Path(path).read_bytes() == IMAGES["/a.jpg"]
    assert lakehouse.read(BRONZE_FETCHED_IMAGES).schema == BRONZE_FETCHED_IMAGES.schema


def test_mmc4_urls_all_end_with_a_final_status(lakehouse: Lakehouse, mmc4_path: Path) -> None:
    refs = []
    for line in mmc4_path.read_text(encoding="utf-8").splitlines():
        doc = json.loads(line)
        refs += [(stable_id("mmc4", doc["url"]), i, im["raw_url"]) for i, im in enumerate(doc["image_info"])]
    _write_refs(lakehouse, refs)
    cfg = _config(lakehouse.storage, allow_networks=[])  # the real defaults of safety, short timeouts
    started = time.monotonic()
    summary = run_fetch(lakehouse, cfg)
    took = time.monotonic() - started

    rows = lakehouse.read(BRONZE_FETCHED_IMAGES).select("url_id", "url", "status", "image_id", "content").collect()
    distinct = {stable_id(url) for _, _, url in refs}
    assert len(refs) == 417 and len(distinct) == 417
    assert sorted(r["url_id"] for r in rows) == sorted(distinct)  # one row per distinct URL, none missing
    assert summary.pending == summary.fetched == 417
    assert sum(summary.by_status.values()) == 417 and set(summary.by_status) <= set(STATUSES)
    assert Counter(r["status"] for r in rows) == Counter(summary.by_status)
    assert all(r["image_id"] == bytes_id(r["content"]) for r in rows if r["status"] == "ok")
    assert took < 90
    print(f"MMC4: {summary}")


def test_no_image_refs_is_a_no_op(lakehouse: Lakehouse) -> None:
    summary = run_fetch(lakehouse, Config(storage=lakehouse.storage))
    assert (summary.pending, summary.by_status, lakehouse.exists(BRONZE_FETCHED_IMAGES)) == (0, {}, False)


def test_counts_are_read_back_when_the_tasks_counts_disagree_with_the_merge(
    lakehouse: Lakehouse, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert = lakehouse.insert_new
    # As if a task had been run twice: its counts no longer match the rows the MERGE wrote.
    monkeypatch.setattr(lakehouse, "insert_new", lambda *args: insert(*args) + 1)
    a, missing = server.url("/a.jpg"), server.url("/missing")
    _write_refs(lakehouse, [("d1", 0, a), ("d1", 1, missing), ("d2", 0, a)])

    summary = run_fetch(lakehouse, _config(lakehouse.storage))

    assert (summary.pending, summary.by_status, summary.bytes) == (2, {"ok": 1, "http_error": 1}, len(IMAGES["/a.jpg"]))
    assert {r["url"]: r["status"] for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()} == {
        a: "ok",
        missing: "http_error",
    }
