"""Bronze ingest on the real MMC4 sample, on OBELICS documents written here, and on malformed input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from realsyn.config import ConfigError
from realsyn.config_sections import Config, IngestConfig, IngestInput, StorageConfig
from realsyn.contracts import BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS, BRONZE_TEXTS
from realsyn.ids import stable_id
from realsyn.stages.ingest import run_ingest
from realsyn.tables import Lakehouse

TABLES = (BRONZE_DOCUMENTS, BRONZE_TEXTS, BRONZE_IMAGE_REFS, BRONZE_INGEST_REJECTS)


def config(storage: StorageConfig, *inputs: IngestInput, **ingest: int) -> Config:
    return Config(storage=storage, ingest=IngestConfig(inputs=list(inputs), **ingest))


def snapshot(lakehouse: Lakehouse) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(tuple(r) for r in lakehouse.read(t).collect()) for t in TABLES}


def test_real_mmc4_sample(lakehouse: Lakehouse, storage: StorageConfig, mmc4_path: Path) -> None:
    cfg = config(storage, IngestInput(path=str(mmc4_path), layout="mmc4", source="mmc4"))
    summary = run_ingest(lakehouse, cfg)
    assert (summary.documents_read, summary.documents_new, summary.documents_rejected) == (107, 107, 0)
    assert lakehouse.read(BRONZE_DOCUMENTS).count() == 107
    assert lakehouse.read(BRONZE_IMAGE_REFS).count() == 417
    assert lakehouse.read(BRONZE_TEXTS).count() == 2072

    # Every text and image reference is where the source file puts it.
    source = [json.loads(line) for line in mmc4_path.read_text(encoding="utf-8").splitlines()]
    expected_texts = {(stable_id("mmc4", d["url"]), i, t) for d in source for i, t in enumerate(d["text_list"])}
    assert {tuple(r) for r in lakehouse.read(BRONZE_TEXTS).collect()} == expected_texts
    expected_images = {
        (stable_id("mmc4", d["url"]), i, x["raw_url"], stable_id(x["raw_url"]), x["matched_text_index"])
        for d in source
        for i, x in enumerate(d["image_info"])
    }
    got = lakehouse.read(BRONZE_IMAGE_REFS).select("doc_id", "position", "url", "url_id", "matched_text_index")
    assert {tuple(r) for r in got.collect()} == expected_images

    # Ingesting the same input again adds nothing and changes nothing.
    before = snapshot(lakehouse)
    again = run_ingest(lakehouse, cfg)
    assert (again.documents_new, again.documents_already_present) == (0, 107)
    assert snapshot(lakehouse) == before


def write_obelics(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def obelics_doc(url: str, texts: list[str | None], images: list[str | None], alt: str = "") -> dict[str, object]:
    meta = [None if i is None else {"src": i, "alt_text": alt} for i in images]
    return {
        "images": images,
        "texts": texts,
        "metadata": json.dumps(meta),
        "general_metadata": json.dumps({"url": url}),
    }


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_obelics_positions(lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path, fmt: str) -> None:
    doc = obelics_doc(
        "https://a.example/1", ["Intro.", None, "A red barn."], [None, "https://img.example/barn.jpg", None], "barn"
    )
    if fmt == "parquet":
        write_obelics(tmp_path / "obelics" / "part-0.parquet", [doc])
    else:
        (tmp_path / "obelics").mkdir()
        (tmp_path / "obelics" / "part-0.jsonl").write_text(json.dumps(doc) + "\n")
    run_ingest(
        lakehouse,
        config(storage, IngestInput(path=str(tmp_path / "obelics"), layout="obelics", format=fmt, source="ob")),
    )
    doc_id = stable_id("ob", "https://a.example/1")
    assertDataFrameEqual(
        lakehouse.read(BRONZE_TEXTS),
        lakehouse.spark.createDataFrame(
            [(doc_id, 0, "Intro."), (doc_id, 2, "A red barn.")], "doc_id string, position int, text string"
        ),
    )
    image = lakehouse.read(BRONZE_IMAGE_REFS).select("doc_id", "position", "url", "alt_text", "matched_text_index")
    assert [tuple(r) for r in image.collect()] == [(doc_id, 1, "https://img.example/barn.jpg", "barn", None)]
    doc = lakehouse.read(BRONZE_DOCUMENTS).select("doc_id", "layout", "url", "n_texts", "n_images").collect()
    assert [tuple(r) for r in doc] == [(doc_id, "obelics", "https://a.example/1", 2, 1)]


def test_malformed_input_is_rejected_with_reasons(lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path) -> None:
    good = {
        "url": "https://ok.example/1",
        "text_list": ["One.", "Two."],
        "image_info": [{"raw_url": "https://i.example/1.jpg", "matched_text_index": 1}],
    }
    lines: list[bytes] = [
        json.dumps(good).encode(),
        b'{"url": "https://bad.example/1", "text_list": ["unterminated',
        b"null",
        b"[1, 2]",
        b"{}",
        b'{"url": "https://bad.example/2", "text_list": "not a list"}',
        b'{"url": "https://bad.example/3", "text_list": ["caf\xe9 latin-1 bytes"]}',
        json.dumps(good).encode(),  # the same document twice
        json.dumps(
            {
                "url": "https://ok.example/2",
                "text_list": ["Fine.", "x" * 500, "", None],
                "image_info": [
                    {"raw_url": "", "matched_text_index": 0},
                    {"raw_url": "https://i.example/2.jpg", "matched_text_index": 9},
                    {"raw_url": "https://i.example/3.jpg", "matched_text_index": 0},
                ],
            }
        ).encode(),
    ]
    mmc4 = tmp_path / "mmc4" / "docs.jsonl"
    mmc4.parent.mkdir()
    mmc4.write_bytes(b"\n".join(lines) + b"\n\n")
    write_obelics(
        tmp_path / "obelics" / "docs.parquet",
        [
            obelics_doc("https://ob.example/unequal", ["a", None], [None]),
            obelics_doc("https://ob.example/both", ["a"], ["https://i.example/b.jpg"]),
            obelics_doc("https://ob.example/neither", ["a", None], [None, None]),
            obelics_doc("https://ob.example/fine", ["Text.", None], [None, "https://i.example/f.jpg"]),
        ],
    )
    cfg = config(
        storage,
        IngestInput(path=str(mmc4.parent), layout="mmc4", source="m"),
        IngestInput(path=str(tmp_path / "obelics"), layout="obelics", format="parquet", source="o"),
        max_text_chars=100,
    )
    summary = run_ingest(lakehouse, cfg)
    assert (summary.documents_read, summary.documents_new, summary.documents_rejected) == (13, 3, 10)

    rejects = lakehouse.read(BRONZE_INGEST_REJECTS)
    got = sorted((r["source"], r["kind"], r["position"], r["reason"]) for r in rejects.collect())
    assert got == sorted(
        [
            ("m", "document", None, "malformed_json"),
            ("m", "document", None, "null_document"),
            ("m", "document", None, "not_a_json_object"),
            ("m", "document", None, "empty_document"),
            ("m", "document", None, "schema_mismatch"),
            ("m", "document", None, "invalid_utf8"),
            ("m", "document", None, "duplicate_document"),
            ("m", "text", 1, "text_too_large"),
            ("m", "text", 2, "empty_text"),
            ("m", "text", 3, "null_text"),
            ("m", "image", 0, "missing_url"),
            ("m", "image", 1, "matched_text_index_out_of_range"),
            ("o", "document", None, "unequal_list_lengths"),
            ("o", "document", None, "position_with_text_and_image"),
            ("o", "document", None, "position_with_neither_text_nor_image"),
        ]
    )
    ok2 = stable_id("m", "https://ok.example/2")
    assert sorted(tuple(r) for r in lakehouse.read(BRONZE_TEXTS).filter(F.col("doc_id") == ok2).collect()) == [
        (ok2, 0, "Fine.")
    ]
    urls = sorted(r["url"] for r in lakehouse.read(BRONZE_IMAGE_REFS).collect())
    assert urls == ["https://i.example/1.jpg", "https://i.example/3.jpg", "https://i.example/f.jpg"]


def test_new_dump_adds_only_new_documents(lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path) -> None:
    def doc(i: int) -> str:
        return json.dumps({"url": f"https://x.example/{i}", "text_list": [f"Text {i}."], "image_info": []})

    folder = tmp_path / "dumps"
    folder.mkdir()
    (folder / "a.jsonl").write_text("\n".join(doc(i) for i in range(3)))
    cfg = config(storage, IngestInput(path=str(folder), layout="mmc4", source="x"))
    assert run_ingest(lakehouse, cfg).documents_new == 3
    (folder / "b.jsonl").write_text("\n".join(doc(i) for i in range(2, 6)))  # overlaps a.jsonl in document 2
    second = run_ingest(lakehouse, cfg)
    # Documents 0-2 are already in bronze; document 2 is read twice in this run, so one copy is a duplicate.
    assert (second.documents_read, second.documents_new, second.documents_already_present) == (7, 3, 3)
    reasons = [
        (r["reason"], r["input_file"].endswith("b.jsonl")) for r in lakehouse.read(BRONZE_INGEST_REJECTS).collect()
    ]
    assert reasons == [("duplicate_document", True)]
    texts = sorted(r["text"] for r in lakehouse.read(BRONZE_TEXTS).collect())
    assert texts == [f"Text {i}." for i in range(6)]


def test_documents_with_many_items_beside_another_input(
    lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path
) -> None:
    """A 100,000-text MMC4 line and a 2,000-position OBELICS line, each beside another input: every item at its
    position (this read was quadratic in the line once there were two inputs), and over the limit a document is
    rejected with its counts and nothing of it written."""
    n = 100_000
    (tmp_path / "mmc4").mkdir()
    big = {"url": "https://big.example/", "text_list": [f"Text {i}." for i in range(n)], "image_info": []}
    over = {"url": "https://over.example/", "text_list": ["a"] * 11, "image_info": []}
    (tmp_path / "mmc4" / "big.jsonl").write_text(json.dumps(big) + "\n" + json.dumps(over) + "\n")
    m = 1_000
    texts = [f"Caption {i}." if i % 2 == 0 else None for i in range(2 * m)]
    images = [None if i % 2 == 0 else f"https://img.example/{i}.jpg" for i in range(2 * m)]
    pos = obelics_doc("https://ob.example/", texts, images)
    pos["metadata"] = json.dumps(
        [None if u is None else {"src": u, "alt_text": f"alt {i}"} for i, u in enumerate(images)]
    )
    (tmp_path / "obelics").mkdir()
    (tmp_path / "obelics" / "a.jsonl").write_text(json.dumps(pos) + "\n")
    cfg = config(
        storage,
        IngestInput(path=str(tmp_path / "mmc4"), layout="mmc4", source="m"),
        IngestInput(path=str(tmp_path / "obelics"), layout="obelics", format="jsonl", source="o"),
        max_texts_per_document=n,
    )
    summary = run_ingest(lakehouse, cfg)
    assert (summary.documents_new, summary.documents_rejected) == (3, 0)
    big_id, ob_id = stable_id("m", "https://big.example/"), stable_id("o", "https://ob.example/")
    over_id = stable_id("m", "https://over.example/")
    got = (
        lakehouse.read(BRONZE_TEXTS)
        .groupBy("doc_id")
        .agg(F.count("*").alias("n"), F.min("position").alias("lo"), F.max("position").alias("hi"))
    )
    expected = [(big_id, n, 0, n - 1), (over_id, 11, 0, 10), (ob_id, m, 0, 2 * m - 2)]
    assert sorted(tuple(r) for r in got.collect()) == sorted(expected)
    assert (
        lakehouse.read(BRONZE_TEXTS)
        .filter(F.col("text") != F.concat(F.lit("Text "), "position", F.lit(".")))
        .filter(F.col("doc_id") == big_id)
        .count()
        == 0
    )
    alts = lakehouse.read(BRONZE_IMAGE_REFS).filter(F.col("alt_text") != F.concat(F.lit("alt "), "position"))
    assert lakehouse.read(BRONZE_IMAGE_REFS).count() == m and alts.count() == 0

    lakehouse.spark.sql(f"DELETE FROM delta.`{lakehouse.location(BRONZE_DOCUMENTS)}`")
    for table in (BRONZE_TEXTS, BRONZE_IMAGE_REFS):
        lakehouse.spark.sql(f"DELETE FROM delta.`{lakehouse.location(table)}`")
    strict = config(
        storage,
        IngestInput(path=str(tmp_path / "mmc4"), layout="mmc4", source="m"),
        IngestInput(path=str(tmp_path / "obelics"), layout="obelics", format="jsonl", source="o"),
        max_texts_per_document=10,
        max_images_per_document=m,
    )
    assert run_ingest(lakehouse, strict).documents_rejected == 3
    rejects = lakehouse.read(BRONZE_INGEST_REJECTS).select("doc_id", "reason").collect()
    assert sorted(tuple(r) for r in rejects) == sorted(
        [(big_id, "too_many_texts"), (over_id, "too_many_texts"), (ob_id, "too_many_texts")]
    )
    assert lakehouse.read(BRONZE_TEXTS).count() == 0 and lakehouse.read(BRONZE_IMAGE_REFS).count() == 0


def test_missing_input_fails_before_any_work(lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path) -> None:
    cfg = config(storage, IngestInput(path=str(tmp_path / "nowhere"), layout="mmc4", source="x"))
    with pytest.raises(ConfigError, match=r"ingest\.inputs\[0\]\.path"):
        run_ingest(lakehouse, cfg)
    assert not lakehouse.exists(BRONZE_DOCUMENTS)


def test_unreadable_files_are_rejected_and_the_good_ones_beside_them_ingested(
    lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path
) -> None:
    def doc(i: int) -> str:
        return json.dumps({"url": f"https://x.example/{i}", "text_list": [f"Text {i}."], "image_info": []})

    mmc4 = tmp_path / "mmc4"
    mmc4.mkdir()
    (mmc4 / "good.jsonl.gz").write_bytes(gzip.compress(f"{doc(0)}\n{doc(1)}\n".encode()))
    whole = gzip.compress("\n".join(doc(i) for i in range(2, 400)).encode())
    (mmc4 / "truncated 1.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # EOFException inside the gzip stream
    obelics = tmp_path / "obelics"
    write_obelics(obelics / "good.parquet", [obelics_doc("https://ob.example/1", ["Text.", None], [None, "u"])])
    (obelics / "notes.parquet").write_text("this is not a parquet file\n")
    wrong = {**obelics_doc("https://ob.example/2", ["T."], [None]), "images": "not a list"}
    write_obelics(obelics / "wrong-type.parquet", [wrong])
    # Names Spark would read as globs ({}, [], *) or Hadoop's checksum layer cannot open (":"), and two links back
    # up the tree (to the input folder, to the folder above it): every file is read, and once. A link to nothing is
    # an unreadable file.
    odd = ["{a}.jsonl", "[b].jsonl", "c:d.jsonl", "e f%41#?ü.jsonl", "x*.jsonl", "xy.jsonl"]
    for i, name in enumerate(odd, start=400):
        (mmc4 / name).write_text(doc(i) + "\n")
    (mmc4 / "sub").mkdir()
    (mmc4 / "sub" / "loop").symlink_to("..")
    (mmc4 / "up").symlink_to("..")
    (mmc4 / "gone.jsonl").symlink_to("nowhere.jsonl")
    write_obelics(obelics / "{p}:[q].parquet", [obelics_doc("https://ob.example/3", ["Odd name.", None], [None, "v"])])
    cfg = config(
        storage,
        IngestInput(path=str(mmc4), layout="mmc4", source="m"),
        IngestInput(path=str(obelics), layout="obelics", format="parquet", source="o"),
    )
    summary = run_ingest(lakehouse, cfg)

    assert (summary.documents_read, summary.documents_new, summary.documents_rejected) == (10, 10, 0)
    texts = ["Text 0.", "Text 1.", *(f"Text {i}." for i in range(400, 406)), "Text.", "Odd name."]
    assert sorted(r["text"] for r in lakehouse.read(BRONZE_TEXTS).collect()) == sorted(texts)
    rejects = sorted(
        (r["source"], r["kind"], Path(r["input_file"]).name, r["reason"], bool(r["detail"]))
        for r in lakehouse.read(BRONZE_INGEST_REJECTS).collect()
    )
    assert rejects == [
        ("m", "file", "gone.jsonl", "unreadable_file", True),
        ("m", "file", "truncated 1.jsonl.gz", "unreadable_file", True),
        ("o", "file", "notes.parquet", "unreadable_file", True),
        ("o", "file", "wrong-type.parquet", "unreadable_file", True),
    ]

    # Fixed in place, the file is read by the next run and its reject row goes.
    (mmc4 / "truncated 1.jsonl.gz").write_bytes(whole)
    again = run_ingest(lakehouse, cfg)
    assert (again.documents_new, again.documents_already_present) == (398, 10)
    names = sorted(Path(r["input_file"]).name for r in lakehouse.read(BRONZE_INGEST_REJECTS).collect())
    assert names == ["gone.jsonl", "notes.parquet", "wrong-type.parquet"]


def test_every_broken_line_is_a_reject_and_one_bad_field_rejects_only_that_field(
    lakehouse: Lakehouse, storage: StorageConfig, tmp_path: Path
) -> None:
    def doc(url: str, texts: object, images: object = ()) -> bytes:
        return json.dumps({"url": url, "text_list": texts, "image_info": list(images)}).encode()

    # Over Jackson's default limit of 20,000,000 characters in one string.
    data_uri = "data:image/png;base64," + "A" * 20_000_000
    lines = [
        b'{"url": "https://bad.example/1", "text_list": ["unterminated',
        b'{"url": "https://bad.example/1", "text_list": ["unterminated',  # the same broken line again
        doc("https://bad.example/2", ["Two objects"]) + b" " + doc("https://bad.example/3", ["on one line."]),
        doc("https://bad.example/4", ["Trailing content."]) + b" x",
        doc("https://bad.example/5", ["Trailing content after ]."]) + b"] x",
        b"{'url': 'https://bad.example/6', 'text_list': ['Single quotes.']}",
        b'{"url": {"a": 1}, "text_list": ["An object as URL."]}',
        b"\xef\xbb\xbf" + doc("https://ok.example/bom", ["After a byte-order mark."]),
        doc(
            "https://ok.example/fields",
            ["Caption one.", "Caption two."],
            [
                {"raw_url": "https://i.example/a.jpg", "matched_text_index": "one", "matched_sim": 0.3},
                {"raw_url": "https://i.example/b.jpg", "matched_text_index": 1},
                {"raw_url": "https://i.example/c.jpg", "matched_text_index": 0, "matched_sim": 0.5},
                {"raw_url": "https://i.example/d.jpg", "matched_text_index": 2**40},
            ],
        )
        .replace(b"0.3", b"0.3")
        .replace(b'"matched_text_index": 1}', b'"matched_text_index": 1, "matched_sim": NaN}'),
        doc(
            "https://ok.example/types",
            ["A text.", 2.5, {"a": 1}, "Nul\u0000inside.", " \t\n\u00a0\u2003\u3000", "\u200b\u200c\u200d\u2060\ufeff"],
        ),
        doc("https://ok.example/data", ["A large inline image."], [{"raw_url": data_uri}]),
    ]
    mmc4 = tmp_path / "mmc4" / "docs.jsonl"
    mmc4.parent.mkdir()
    mmc4.write_bytes(b"\n".join(lines) + b"\n")
    summary = run_ingest(lakehouse, config(storage, IngestInput(path=str(mmc4.parent), layout="mmc4", source="m")))

    assert (summary.documents_read, summary.documents_new, summary.documents_rejected) == (11, 4, 7)
    rejects = sorted(
        (r["kind"], r["position"], r["reason"], r["detail"]) for r in lakehouse.read(BRONZE_INGEST_REJECTS).collect()
    )
    assert rejects == [
        *[("document", None, "malformed_json", None)] * 6,
        ("document", None, "schema_mismatch", None),
        ("field", 0, "invalid_matched_text_index", "one"),
        ("field", 1, "invalid_matched_sim", "NaN"),
        ("field", 3, "invalid_matched_text_index", "1099511627776"),
        ("text", 1, "non_string_text", "JSON type DECIMAL"),
        ("text", 2, "non_string_text", "JSON type OBJECT"),
        ("text", 3, "nul_in_text", None),
        ("text", 4, "blank_text", None),
        ("text", 5, "blank_text", None),
    ]
    assert lakehouse.read(BRONZE_INGEST_REJECTS).select("reject_id").distinct().count() == 15
    refs = lakehouse.read(BRONZE_IMAGE_REFS).select("url", "matched_text_index", "matched_sim")
    assert sorted(tuple(r) for r in refs.collect()) == [
        (data_uri, None, None),
        ("https://i.example/a.jpg", None, 0.3),
        ("https://i.example/b.jpg", 1, None),
        ("https://i.example/c.jpg", 0, 0.5),
        ("https://i.example/d.jpg", None, None),
    ]
    texts = sorted(r["text"] for r in lakehouse.read(BRONZE_TEXTS).collect())
    assert texts == ["A large inline image.", "A text.", "After a byte-order mark.", "Caption one.", "Caption two."]
