"""OBELICS and MMC4 records read into one document shape: positions, per-field reasons, parse and layout reasons,
and the limits on items per document. What the ingest stage makes of that shape is tested in
tests/realsyn/stages/test_ingest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession

from realsyn.config_sections import IngestInput
from realsyn.document_layouts import IMAGE_ITEM, TEXT_ITEM, Limits, read_documents

LIMITS = Limits(max_texts=10, max_images=10)


def obelics_doc(url: str, texts: list[str | None], images: list[str | None]) -> dict[str, object]:
    meta = [None if i is None else {"src": i, "alt_text": f"alt of {i}"} for i in images]
    return {
        "images": images,
        "texts": texts,
        "metadata": json.dumps(meta),
        "general_metadata": json.dumps({"url": url}),
    }


def read(spark: SparkSession, inp: IngestInput, limits: Limits = LIMITS) -> dict[str, dict[str, Any]]:
    """The documents of ``inp`` by URL (by raw line where a document has none)."""
    rows = read_documents(spark, inp, limits).collect()
    return {r["url"] or r["raw"]: r.asDict(recursive=True) for r in rows}


def test_obelics_positions_and_layout_reasons(spark: SparkSession, tmp_path: Path) -> None:
    docs = [
        obelics_doc("https://a.example/1", ["Intro.", None, "A red barn."], [None, "https://i.example/barn.jpg", None]),
        obelics_doc("https://a.example/unequal", ["a", None], [None]),
        obelics_doc("https://a.example/both", ["a"], ["https://i.example/b.jpg"]),
        obelics_doc("https://a.example/neither", ["a", None], [None, None]),
    ]
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "part-0.parquet")
    got = read(spark, IngestInput(path=str(tmp_path), layout="obelics", format="parquet", source="ob"))

    first = got["https://a.example/1"]
    assert (first["source"], first["layout"], first["parse_reason"], first["layout_reason"]) == (
        "ob",
        "obelics",
        None,
        None,
    )
    assert first["texts"] == [
        {"position": 0, "text": "Intro.", "json_type": None},
        {"position": 2, "text": "A red barn.", "json_type": None},
    ]
    assert first["images"] == [
        {
            "position": 1,
            "url": "https://i.example/barn.jpg",
            "alt_text": "alt of https://i.example/barn.jpg",
            "matched_text_index": None,
            "matched_sim": None,
            "meta": '{"src":"https://i.example/barn.jpg","alt_text":"alt of https://i.example/barn.jpg"}',
            "field_reason": None,
            "field_detail": None,
        }
    ]
    assert (first["n_texts"], first["n_images"], first["meta"]) == (2, 1, json.dumps({"url": "https://a.example/1"}))
    reasons = {url: doc["layout_reason"] for url, doc in got.items()}
    assert reasons == {
        "https://a.example/1": None,
        "https://a.example/unequal": "unequal_list_lengths",
        "https://a.example/both": "position_with_text_and_image",
        "https://a.example/neither": "position_with_neither_text_nor_image",
    }


def test_mmc4_lines_fields_and_text_types(spark: SparkSession, tmp_path: Path) -> None:
    good = {
        "url": "https://m.example/1",
        "text_list": ["A text.", 2.5],
        "image_info": [
            {"raw_url": "https://i.example/a.jpg", "matched_text_index": "one", "image_name": "a"},
            {"raw_url": "https://i.example/b.jpg", "matched_text_index": 1, "matched_sim": 0.25},
            {"raw_url": "https://i.example/c.jpg", "matched_text_index": 0, "matched_sim": "NaN"},
        ],
    }
    lines = [
        json.dumps(good).encode().replace(b'"NaN"', b"NaN"),
        b'{"url": "https://m.example/broken", "text_list": ["unterminated',
        b"null",
        b"[1, 2]",
        b'{"url": "https://m.example/2", "text_list": "not a list"}',
        b'{"url": "https://m.example/3", "text_list": ["caf\xe9"]}',
        b"",
    ]
    (tmp_path / "docs.jsonl").write_bytes(b"\n".join(lines))
    got = read(spark, IngestInput(path=str(tmp_path), layout="mmc4", source="m"))

    doc = got["https://m.example/1"]
    assert [(t["position"], t["text"], t["json_type"]) for t in doc["texts"]] == [
        (0, "A text.", "STRING"),
        (1, "2.5", doc["texts"][1]["json_type"]),
    ]
    assert doc["texts"][1]["json_type"].startswith("DECIMAL")
    images = [
        (i["position"], i["url"], i["matched_text_index"], i["matched_sim"], i["field_reason"], i["field_detail"])
        for i in doc["images"]
    ]
    assert images == [
        (0, "https://i.example/a.jpg", None, None, "invalid_matched_text_index", "one"),
        (1, "https://i.example/b.jpg", 1, 0.25, None, None),
        (2, "https://i.example/c.jpg", 0, None, "invalid_matched_sim", "NaN"),
    ]
    assert json.loads(doc["images"][0]["meta"]) == {"image_name": "a"}
    reasons = sorted((doc["parse_reason"] or "") for doc in got.values())
    assert reasons == ["", "invalid_utf8", "malformed_json", "not_a_json_object", "null_document", "schema_mismatch"]


def test_a_document_over_the_limits_keeps_its_counts_and_no_items(spark: SparkSession, tmp_path: Path) -> None:
    docs = [
        {"url": "https://m.example/small", "text_list": ["a", "b"], "image_info": [{"raw_url": "u"}]},
        {"url": "https://m.example/texts", "text_list": ["a", "b", "c"], "image_info": []},
        {"url": "https://m.example/images", "text_list": [], "image_info": [{"raw_url": "u"}, {"raw_url": "v"}]},
    ]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    got = read(spark, IngestInput(path=str(tmp_path), layout="mmc4", source="m"), Limits(max_texts=2, max_images=1))
    counts = {url: (len(d["texts"]), len(d["images"]), d["n_texts"], d["n_images"]) for url, d in got.items()}
    assert counts == {
        "https://m.example/small": (2, 1, 2, 1),
        "https://m.example/texts": (0, 0, 3, 0),
        "https://m.example/images": (0, 0, 0, 2),
    }


def test_both_layouts_give_one_shape(spark: SparkSession, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.jsonl").write_text(json.dumps({"url": "u", "text_list": ["t"], "image_info": []}))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "a.jsonl").write_text(json.dumps(obelics_doc("v", ["t"], [None])))
    mmc4 = read_documents(spark, IngestInput(path=str(tmp_path / "m"), layout="mmc4", source="m"), LIMITS)
    obelics = read_documents(spark, IngestInput(path=str(tmp_path / "o"), layout="obelics", source="o"), LIMITS)
    assert [(f.name, f.dataType) for f in mmc4.schema] == [(f.name, f.dataType) for f in obelics.schema]
    assert mmc4.schema["texts"].dataType.elementType == TEXT_ITEM  # type: ignore[attr-defined]
    assert mmc4.schema["images"].dataType.elementType == IMAGE_ITEM  # type: ignore[attr-defined]
