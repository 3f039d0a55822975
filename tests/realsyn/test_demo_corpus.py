"""The demo corpus is deterministic and every image is described by the text matched to it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from realsyn.config_sections import DemoCorpusConfig
from realsyn.demo_corpus import PHOTOS, generate


def read_all(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jsonl"))}


def test_same_seed_same_corpus_and_captions_match(tmp_path: Path) -> None:
    first = generate(DemoCorpusConfig(output=str(tmp_path / "a"), documents=21, synthetic_images=5, seed=3))
    second = generate(DemoCorpusConfig(output=str(tmp_path / "b"), documents=21, synthetic_images=5, seed=3))
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
    cfg = DemoCorpusConfig(output=str(tmp_path / "c"), documents=4, synthetic_images=1)
    out = generate(cfg)
    shard = out / "mmc4" / "docs_shard_00000.jsonl"
    stamp = shard.stat().st_mtime_ns
    generate(cfg)
    assert shard.stat().st_mtime_ns == stamp
