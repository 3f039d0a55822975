"""The demo corpus of either kind: the photos corpus is deterministic and every image is described by the text
matched to it; the generated kind is the corpus generator's, read by the inputs the run points ingest at."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError

from realsyn.config import load_config
from realsyn.config_sections import DemoCorpusConfig
from realsyn.corpus_generator import MANIFEST
from realsyn.demo_corpus import PHOTOS, generate, with_demo_inputs

REPO = Path(__file__).resolve().parents[2]


def read_all(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jsonl"))}


def test_same_seed_same_corpus_and_captions_match(tmp_path: Path) -> None:
    first = generate(
        DemoCorpusConfig(kind="photos", output=str(tmp_path / "a"), documents=21, synthetic_images=5, seed=3)
    )
    second = generate(
        DemoCorpusConfig(kind="photos", output=str(tmp_path / "b"), documents=21, synthetic_images=5, seed=3)
    )
    texts_a = read_all(first).values()
    texts_b = [t.replace(b"/b/images/", b"/a/images/") for t in read_all(second).values()]
    assert list(texts_a) == texts_b

    docs = [json.loads(line) for line in (first / "mmc4" / "docs_shard_00000.jsonl").read_text().splitlines()]
    assert len(docs) == 11
    captions = set(PHOTOS.values())
    for doc in docs:
        for info in doc["image_info"]:
            text = doc["text_list"][info["matched_text_index"]]
            path = Path(info["raw_url"].removeprefix("file://"))
            with Image.open(path) as im:
                im.verify()
            if path.stem.removesuffix("_copy").removesuffix("_near") + path.suffix in {k.split(":")[1] for k in PHOTOS}:
                assert text in captions
            elif path.stem.startswith("drawing_"):
                assert text.startswith("A drawing shows")
    obelics = pq.read_table(first / "obelics").to_pylist()
    assert len(obelics) == 10
    for doc in obelics:
        assert len(doc["texts"]) == len(doc["images"])
        assert all((t is None) != (i is None) for t, i in zip(doc["texts"], doc["images"], strict=True))


def test_finished_corpus_is_not_rewritten(tmp_path: Path) -> None:
    cfg = DemoCorpusConfig(kind="photos", output=str(tmp_path / "c"), documents=4, synthetic_images=1)
    out = generate(cfg)
    shard = out / "mmc4" / "docs_shard_00000.jsonl"
    stamp = shard.stat().st_mtime_ns
    generate(cfg)
    assert shard.stat().st_mtime_ns == stamp


def test_the_generated_kind_is_the_generators_corpus_and_what_ingest_reads(tmp_path: Path) -> None:
    demo = DemoCorpusConfig(output=str(tmp_path / "g"), documents=6, seed=2)
    out = generate(demo)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["settings"]["documents"] == 6 and manifest["settings"]["seed"] == 2
    assert manifest["counts"]["documents.mmc4"] + manifest["counts"]["documents.obelics"] == 6
    cfg = with_demo_inputs(load_config(REPO / "conf" / "local.yaml").model_copy(update={"demo": demo}))
    assert [(i.path, i.layout) for i in cfg.ingest.inputs] == [
        (str(out / "mmc4"), "mmc4"),
        (str(out / "obelics"), "obelics"),
    ]
    assert str(out) in cfg.fetch.file_roots
    docs = [json.loads(line) for p in sorted((out / "mmc4").glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert len(docs) == 3
    assert all(Path(i["raw_url"].removeprefix("file://")).is_relative_to(out) for d in docs for i in d["image_info"])


def test_a_key_of_the_other_kind_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"demo\.synthetic_images does not apply to demo\.kind .generated."):
        DemoCorpusConfig(synthetic_images=4)
    with pytest.raises(ValidationError, match=r"demo\.generated does not apply to demo\.kind .photos."):
        DemoCorpusConfig(kind="photos", generated={"layout": "mmc4"})
