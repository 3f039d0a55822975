"""The whole pipeline on the bad-input corpus (tests/data/bad_inputs): no crash, every input row kept or rejected
with a reason, and a funnel that reconciles inside every stage and from one stage to the next."""

from __future__ import annotations

import base64
import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from realsyn.config import load_config
from realsyn.config_sections import IngestInput
from realsyn.contracts import (
    BRONZE_DOCUMENTS,
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    BRONZE_INGEST_REJECTS,
    BRONZE_TEXTS,
    FUNNEL,
    GOLD_DATASET,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
    SILVER_SENTENCE_EMBEDDINGS,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
    TABLES,
)
from realsyn.stages.balance import run_balance
from realsyn.stages.cluster_images import run_cluster_images
from realsyn.stages.cluster_sentences import run_cluster_sentences
from realsyn.stages.embed import run_embed
from realsyn.stages.export import export_root, run_export
from realsyn.stages.extract_images import run_extract_images
from realsyn.stages.extract_sentences import run_extract_sentences
from realsyn.stages.fetch import run_fetch
from realsyn.stages.generate import run_generate
from realsyn.stages.ingest import run_ingest
from realsyn.stages.retrieve import run_retrieve
from realsyn.stages.semantic_dedup import run_semantic_dedup
from realsyn.tables import Lakehouse
from tests.support.scripts import load_script
from udfs.urls import redact_url

REPO = Path(__file__).resolve().parents[2]
corpus = load_script("make_bad_inputs", REPO / "tests/data/bad_inputs/make_bad_inputs.py")

# The server listens on 127.0.0.2, the only address allowed: a redirect to 127.0.0.1 must still be refused.
HOST = "127.0.0.2"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path in self.server.raw:
            self.wfile.write(self.server.raw[self.path])
            self.close_connection = True
            return
        targets = {
            "/redirect-loopback": f"http://127.0.0.1:{port}/astronaut.jpg",
            "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
            "/chain-1": "/chain-2",
            "/chain-2": f"http://127.0.0.1:{port}/astronaut.jpg",
        }
        if self.path in targets:
            self.send_response(302)
            self.send_header("Location", targets[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        name = self.path.split("?")[0].lstrip("/")
        path = self.server.root / name
        auth = "Basic " + base64.b64encode(":".join(corpus.BASIC_AUTH).encode()).decode()
        if name.startswith("private/") and self.headers.get("Authorization") != auth:
            path = self.server.root / "missing"
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")  # whatever the bytes are: the content decides
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the fetcher opens many connections at once; the default 5 drops SYNs (1 s retry)

    def __init__(self, root: Path) -> None:
        super().__init__((HOST, 0), _Handler)
        self.root = root
        self.raw = corpus.raw_replies()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    """The HTTP server of the corpus's images, with redirects to refused addresses."""
    srv = _Server(tmp_path / "corpus" / "images")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _funnel(lakehouse: Lakehouse) -> dict[str, list[tuple[str, int, int, int]]]:
    rows = lakehouse.read(FUNNEL).orderBy("stage", "step_index").collect()
    out: dict[str, list[tuple[str, int, int, int]]] = {}
    for r in rows:
        out.setdefault(r["stage"], []).append((r["step"], r["rows_in"], r["rows_out"], r["rows_rejected"]))
    return out


def test_bad_inputs_through_the_whole_pipeline(lakehouse: Lakehouse, server: _Server, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    urls = corpus.write_corpus(out, f"http://{HOST}:{server.server_address[1]}")
    assert len(corpus.KINDS) >= 30 and len(corpus.SECOND_KINDS) >= 20
    overrides = [
        f"storage.root={lakehouse.storage.root}",
        f"fetch.allow_networks=['{HOST}/32']",
        f"fetch.file_roots=['{out / 'images'}']",
        # No endpoint here is slow on purpose: generous limits keep a loaded machine from turning a hop into a timeout.
        *["fetch.connect_timeout_s=10", "fetch.read_timeout_s=10", "fetch.total_timeout_s=30"],
        *["fetch.max_attempts=1", "fetch.tasks=1"],
    ]
    cfg = load_config(REPO / "conf" / "local.yaml", overrides)
    inputs = [
        IngestInput(path=str(out / "mmc4"), layout="mmc4", format="jsonl", source="bad-mmc4"),
        IngestInput(path=str(out / "obelics"), layout="obelics", format="parquet", source="bad-obelics"),
    ]
    cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"inputs": inputs})})

    ingest = run_ingest(lakehouse, cfg)
    run_fetch(lakehouse, cfg)
    run_extract_images(lakehouse, cfg)
    run_extract_sentences(lakehouse, cfg)
    run_embed(lakehouse, cfg)
    run_semantic_dedup(lakehouse, cfg)
    run_cluster_sentences(lakehouse, cfg)
    run_retrieve(lakehouse, cfg)
    run_cluster_images(lakehouse, cfg)
    run_generate(lakehouse, cfg)
    run_balance(lakehouse, cfg)
    run_export(lakehouse, cfg)

    # Ingest: every bad record is a reject with its reason; the good records beside them are ingested.
    rejects = Counter((r["kind"], r["reason"]) for r in lakehouse.read(BRONZE_INGEST_REJECTS).collect())
    assert rejects == Counter(
        {
            ("file", "unreadable_file"): 3,
            ("document", "malformed_json"): 5,
            ("document", "invalid_utf8"): 1,
            ("document", "null_document"): 1,
            ("document", "not_a_json_object"): 1,
            ("document", "empty_document"): 1,
            ("document", "schema_mismatch"): 3,
            ("document", "duplicate_document"): 1,
            ("document", "unequal_list_lengths"): 1,
            ("document", "position_with_text_and_image"): 1,
            ("text", "non_string_text"): 2,
            ("text", "nul_in_text"): 1,
            ("text", "null_text"): 1,
            ("text", "text_too_large"): 1,
            ("text", "blank_text"): 2,
            ("field", "invalid_matched_text_index"): 2,
            ("field", "invalid_matched_sim"): 1,
            ("image", "matched_text_index_out_of_range"): 1,
            ("image", "missing_url"): 1,
        }
    )
    documents = sorted(r["url"] for r in lakehouse.read(BRONZE_DOCUMENTS).collect())
    assert documents == sorted(
        [
            *(f"https://ok.example/{n}" for n in ("a", "b", "bom-no-images", "no-texts", "types", "fields", "gz")),
            *(f"https://ok.example/{n}" for n in (*corpus.ODD_NAMES, "second-fields")),
            "https://ob.example/good",
            "https://ob.example/odd-name",
        ]
    )
    n_document_rejects = sum(n for (kind, _), n in rejects.items() if kind == "document")
    assert (ingest.documents_read, ingest.documents_new, ingest.documents_rejected) == (
        len(documents) + n_document_rejects,
        len(documents),
        n_document_rejects,
    )

    # Fetch: every distinct URL of bronze.image_refs ends in its one known status.
    refs = lakehouse.read(BRONZE_IMAGE_REFS)
    fetched = {r["url"]: r["status"] for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()}
    assert fetched == {redact_url(u)[0]: status for u, status in urls.items()}  # stored without secrets
    assert {r["url"] for r in refs.collect()} == set(urls)

    # Image extraction keeps each photograph once, measured as displayed; the same bytes at three URLs are two
    # rejects with keys of their own (the URLs'), the same picture as PNG and JPEG one.
    url_id = {r["url"]: r["url_id"] for r in lakehouse.read(BRONZE_FETCHED_IMAGES).collect()}
    base = f"http://{HOST}:{server.server_address[1]}"
    images = {r["image_id"]: r for r in lakehouse.read(SILVER_IMAGES).collect()}
    assert len(images) == 7
    (turned,) = [r for r in images.values() if url_id[f"{base}/turned.jpg"] in r["url_ids"]]
    assert (turned["width"], turned["height"]) == (427, 640)
    hubble = {url_id[f"{base}/hubble.jpg{q}"] for q in ("", "?copy=2", "?copy=3")}
    flower = {url_id[f"{base}/flower.{ext}"] for ext in ("jpg", "png")}
    assert sum(set(r["url_ids"]) == hubble for r in images.values()) == 1
    assert sum(set(r["url_ids"]) == flower for r in images.values()) == 1
    image_rejects = {r["reject_id"]: r for r in lakehouse.read(SILVER_IMAGE_REJECTS).collect()}
    exact = [r for r in image_rejects.values() if r["reason"] == "exact_duplicate"]
    near = [r for r in image_rejects.values() if r["reason"] == "near_duplicate"]
    assert len(image_rejects) == len(exact) + len(near) == 3
    assert len({u for r in exact for u in r["url_ids"]}) == 2 and {u for r in exact for u in r["url_ids"]} < hubble
    assert len(near) == 1 and set(near[0]["url_ids"]) < flower

    # Sentences: the emoji-only text is rejected as such; every kept sentence and every reject has a reason.
    reasons = Counter(r["reason"] for r in lakehouse.read(SILVER_SENTENCE_REJECTS).collect())
    assert reasons["emoji"] == 1 and None not in reasons

    # The funnel: rows in = kept + rejected at every step, each step's kept rows enter the next step, and each
    # stage starts from what the one before kept.
    funnel = _funnel(lakehouse)
    for stage, steps in funnel.items():
        for step, rows_in, rows_out, rejected in steps:
            assert rows_in == rows_out + rejected and rows_out <= rows_in, (stage, step)
    ingest_steps = {s[0]: s for s in funnel["ingest"]}
    assert ingest_steps["documents"][1:3] == (len(documents) + n_document_rejects, len(documents))
    assert ingest_steps["texts"][2] == lakehouse.read(BRONZE_TEXTS).count()
    assert ingest_steps["image_refs"][2] == refs.count()
    fetch = funnel["fetch"]
    assert [s[0] for s in fetch] == ["distinct_urls", "fetch"]
    assert fetch[0][1] == refs.count() and fetch[0][2] == fetch[1][1] == len(urls)
    assert fetch[1][2] == sum(1 for s in urls.values() if s == "ok")
    for stage in ("extract_images", "extract_sentences"):
        for before, after in itertools.pairwise(funnel[stage]):
            assert before[2] == after[1], (stage, before, after)
    assert funnel["extract_images"][0][1] == fetch[1][2]
    assert funnel["extract_images"][-1][2] == lakehouse.read(SILVER_IMAGES).count()
    assert funnel["extract_sentences"][-1][2] == lakehouse.read(SILVER_SENTENCES).count()
    embed_images, embed_sentences = funnel["embed"]
    assert embed_images[0] == "images" and embed_images[1] == lakehouse.read(SILVER_IMAGES).count()
    assert embed_sentences[0] == "sentences" and embed_sentences[1] == lakehouse.read(SILVER_SENTENCES).count()
    retrieve = funnel["retrieve"]
    n_image_embeddings = lakehouse.read(SILVER_IMAGE_EMBEDDINGS).count()
    assert retrieve[0][1] == n_image_embeddings == embed_images[2]
    assert retrieve[1][2] == n_image_embeddings  # every image got sentences
    n_sentence_embeddings = lakehouse.read(SILVER_SENTENCE_EMBEDDINGS).where(F.col("model_id") == cfg.embed.model)
    assert n_sentence_embeddings.count() == embed_sentences[2]
    assert {r["model_id"] for r in lakehouse.read(FUNNEL).where(F.col("stage") == "embed").collect()} == {
        cfg.embed.model
    }

    # Every table is unique on its declared key.
    for table in TABLES.values():
        if lakehouse.exists(table.name):
            df = lakehouse.read(table.name)
            assert df.count() == df.select(*table.keys).distinct().count(), table.name

    # Secrets: the password and tokens of the signed URL reached the server (the image was fetched) and nothing
    # after the fetch: no table but the ingested input itself, no export file.
    signed = next(u for u in urls if corpus.SECRETS[0] in u)
    dataset = {r["raw_image_url"]: r["url_redacted"] for r in lakehouse.read(GOLD_DATASET).collect()}
    assert dataset[redact_url(signed)[0]] is True and sum(dataset.values()) == 1
    upstream = (BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS)  # the input as ingested: the fetch reads its URLs there
    for name in sorted(set(TABLES) - {t.name for t in upstream}):
        if lakehouse.exists(name):
            rows = lakehouse.read(name).select(F.to_json(F.struct("*")).alias("j")).collect()
            assert not any(secret in r["j"] for r in rows for secret in corpus.SECRETS), name
    for path in Path(export_root(cfg)).rglob("*"):
        if path.is_file():
            text = (
                repr(pq.read_table(path).to_pylist())
                if path.suffix == ".parquet"
                else path.read_bytes().decode("latin-1")
            )
            assert not any(secret in text for secret in corpus.SECRETS), path
