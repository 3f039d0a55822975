"""Exports read back by real readers (webdataset, open_clip's loader, pyarrow, deltalake, DuckDB), byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from realsyn.config import ConfigError
from realsyn.config_sections import Config
from realsyn.contracts import GOLD_DATASET, SILVER_IMAGES
from realsyn.dataset_card import ModelUsed
from realsyn.stages.balance import run_balance
from realsyn.stages.export import RELEASE_COLUMNS, VLM_ROLE, models_used, run_export, shard_samples
from realsyn.tables import Lakehouse
from tests.support.gold_data import Img, write_inputs
from tests.support.plans import above_the_bytes, physical_plan
from udfs.models import load_registry
from udfs.webdataset import paired

TEXTS = {
    "a": ["A dog runs on the beach.", "t2", "t3", "syn a"],
    "b": ["Un café près du lac — naïve façade, 漢字 and an emoji-free line", "second", "third", "syn b ✓"],
    "c": ["A red kite over a field.", "x", "y", "syn c"],
    "h": ["A GIF stored as GIF.", "g2", "g3", "syn h"],
}


def corpus() -> list[Img]:
    return [
        Img("a", [("d1", 0, "http://x/a.jpg")], 0, TEXTS["a"][:3], TEXTS["a"][3], seed=1),
        Img("b", [("d1", 1, "http://x/b.jpg")], 0, TEXTS["b"][:3], TEXTS["b"][3], seed=2),
        Img("c", [("d2", 0, "http://x/c.png")], 1, TEXTS["c"][:3], TEXTS["c"][3], fmt="PNG", seed=3),
        Img("h", [("d2", 1, "http://x/h.gif")], 1, TEXTS["h"][:3], TEXTS["h"][3], fmt="GIF", seed=4),
    ]


def test_the_card_lists_a_vlm_once_in_a_role_of_its_own() -> None:
    registry = load_registry(Path(__file__).resolve().parents[3] / "conf" / "models.yaml")
    vlm_key = {"model_id": "tiny-random", "captioner_id": "tiny-random-vlm", "llm_id": "tiny-random-vlm"}
    pipeline_key = {"model_id": "tiny-random", "captioner_id": "blip-base", "llm_id": "gone-from-the-registry"}
    assert models_used([vlm_key, pipeline_key], registry) == [
        ModelUsed("image and text encoder", "tiny-random", None, None, random_init=True),
        ModelUsed("captioner", "blip-base", "Salesforce/blip-image-captioning-base"),
        ModelUsed(VLM_ROLE, "tiny-random-vlm", None, None, random_init=True),
        ModelUsed("llm", "gone-from-the-registry"),
    ]


def make_cfg(lakehouse: Lakehouse, **export: Any) -> Config:
    return Config.model_validate(
        {
            "storage": {"root": lakehouse.storage.root},
            "embed": {"model": "m"},
            "balance": {"scales": {"tiny": {"cap": 1}}},
            "export": export,
        }
    )


def shard_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_exports_round_trip_through_real_readers(lakehouse: Lakehouse) -> None:
    import duckdb
    import duckdb_extension_delta
    import webdataset as wds
    from deltalake import DeltaTable
    from open_clip_train.data import get_wds_dataset

    cfg = make_cfg(lakehouse, samples_per_shard=1, scales=["all"])
    write_inputs(lakehouse, cfg, corpus(), leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    first = run_export(lakehouse, cfg)
    root = Path(lakehouse.storage.root or "").resolve() / "exports"
    shards = root / "all" / "webdataset"
    assert sorted(p.name for p in shards.glob("*.tar")) == [f"0000{i}.tar" for i in range(4)]
    assert first.scales[0].rows == 4 and first.scales[0].shards == 4

    cfg = make_cfg(lakehouse, samples_per_shard=2, scales=["all"])
    summary = run_export(lakehouse, cfg)
    assert summary.scales[0].shards == 2
    # The rerun with larger shards removed the two shards the first run wrote beyond the new count.
    assert json.loads((shards / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2}
    digests = shard_digests(shards)
    assert sorted(digests) == ["00000.tar", "00001.tar"]

    silver = lakehouse.read(SILVER_IMAGES).collect()
    stored = {r["image_id"]: (bytes(r["content"]), r["format"]) for r in silver}
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in silver}
    gold = {r["image_id"]: r.asDict() for r in lakehouse.read(GOLD_DATASET).collect()}

    # webdataset, no decoding: every member byte-identical to what was stored.
    seen = {}
    for sample in wds.WebDataset(sorted(str(p) for p in shards.glob("*.tar")), shardshuffle=False):
        key = sample["__key__"]
        meta = json.loads(sample["json"].decode("utf-8"))
        seen[key] = meta
        assert sample["txt"] == TEXTS[key][0].encode("utf-8")
        assert [meta["text1"], meta["text2"], meta["text3"], meta["syn_text"]] == TEXTS[key]
        assert meta["image_id"] == key and meta["leaf_id"] == gold[key]["leaf_id"]
        assert meta["raw_image_url"] == gold[key]["raw_image_url"]
        content, fmt = stored[key]
        # img2dataset's keys: width / height come from silver.images through the export's join.
        assert meta["url"] == gold[key]["raw_image_url"] and meta["caption"] == TEXTS[key][0]
        assert (meta["status"], meta["error_message"], meta["exif"]) == ("success", None, None)
        assert (meta["width"], meta["height"]) == (meta["original_width"], meta["original_height"]) == sizes[key]
        assert meta["sha256"] == hashlib.sha256(content).hexdigest()
        if fmt == "JPEG":
            assert sample["jpg"] == content
        elif fmt == "PNG":
            assert sample["png"] == content
        else:  # GIF: converted once to PNG, the same pixels
            with Image.open(io.BytesIO(content)) as gif, Image.open(io.BytesIO(sample["png"])) as png:
                assert np.array_equal(np.asarray(gif.convert("RGB")), np.asarray(png.convert("RGB")))
    assert sorted(seen) == ["a", "b", "c", "h"]

    # open_clip's training loader: sample count from sizes.json, images decoded, texts as written.
    args = SimpleNamespace(
        train_data=str(shards / "{00000..00001}.tar"),
        train_num_samples=None,
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=1,
        workers=0,
        world_size=1,
    )
    info = get_wds_dataset(args, lambda im: np.asarray(im).shape, is_train=True, tokenizer=lambda t: [t])
    assert info.dataloader.num_samples == 4
    loaded = {text[0]: shape[0] for shape, text in info.dataloader}
    assert set(loaded) == {t[0] for t in TEXTS.values()}
    assert loaded[TEXTS["c"][0]][2] == 3  # decoded to RGB

    # Release parquet: exactly the five columns, texts intact.
    table = pq.read_table(root / "all" / "parquet")
    assert table.column_names == RELEASE_COLUMNS
    assert sorted(tuple(r.values()) for r in table.to_pylist()) == sorted(
        (gold[k]["raw_image_url"], *TEXTS[k]) for k in TEXTS
    )

    # The Delta export, read by delta-rs and by DuckDB's delta extension.
    delta_path = root / "all" / "delta"
    frame = DeltaTable(str(delta_path)).to_pandas()
    assert sorted(frame[["image_id", "text1", "syn_text"]].itertuples(index=False, name=None)) == sorted(
        (k, v[0], v[3]) for k, v in TEXTS.items()
    )
    ext = next(Path(duckdb_extension_delta.__file__).parent.rglob("*.duckdb_extension"))
    con = duckdb.connect()
    con.execute(f"LOAD '{ext}'")
    got = con.execute(f"SELECT image_id, text2, text3 FROM delta_scan('{delta_path}') ORDER BY image_id").fetchall()
    assert got == [(k, TEXTS[k][1], TEXTS[k][2]) for k in sorted(TEXTS)]

    # A rerun on the same table versions and settings writes nothing; after an export killed before its manifest,
    # it writes the same bytes again. One scale is exported alone into its own folder.
    files = {p: p.stat().st_mtime_ns for p in (root / "all").rglob("*") if p.is_file()}
    again = run_export(lakehouse, cfg)
    assert again.scales[0].unchanged and (again.scales[0].rows, again.scales[0].shards) == (4, 2)
    assert {p: p.stat().st_mtime_ns for p in (root / "all").rglob("*") if p.is_file()} == files
    (root / "all" / "_export.json").unlink()
    assert not run_export(lakehouse, cfg).scales[0].unchanged
    assert shard_digests(shards) == digests
    alone = run_export(lakehouse, cfg, scales=["tiny"])
    assert [s.scale for s in alone.scales] == ["tiny"] and alone.scales[0].rows == 2
    tiny = pq.read_table(root / "tiny" / "parquet").column("text1").to_pylist()
    in_tiny = {k for k, row in gold.items() if row["scale_tiny"]}
    assert sorted(tiny) == sorted(TEXTS[k][0] for k in in_tiny)
    assert json.loads((root / "tiny" / "webdataset" / "sizes.json").read_text()) == {"00000.tar": 2}


def one_partition_per_shard_in_order(samples: list[tuple[int, int, int, str, str]]) -> bool:
    """Whether the rows of every shard of (partition, shard, idx, ...) rows lie in one partition (a partition may
    hold several shards), each partition's rows sorted by (shard, idx)."""
    partitions = {shard: {p for p, s, *_ in samples if s == shard} for _, shard, *_ in samples}
    in_order = [[(s, idx) for p, s, idx, *_ in samples if p == q] for q in {p for p, *_ in samples}]
    return all(len(ps) == 1 for ps in partitions.values()) and all(rows == sorted(rows) for rows in in_order)


def test_the_bytes_are_shuffled_once_by_shard_and_the_texts_meet_them_there(lakehouse: Lakehouse) -> None:
    cfg = make_cfg(lakehouse, scales=["all"])
    write_inputs(lakehouse, cfg, corpus(), leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    images, rows = lakehouse.read(SILVER_IMAGES), lakehouse.read(GOLD_DATASET)
    spark = rows.sparkSession

    def shards_of(samples: DataFrame) -> tuple[list[str], list[tuple[int, int, int, str, str]]]:
        """The operators above the bytes' scan, and (partition, shard, idx, key, text1) of every sample in the
        order a writer task reads them, its two rows paired."""
        got = samples.withColumn("p", F.spark_partition_id()).collect()
        by_partition = [[r.asDict() for r in got if r["p"] == p] for p in sorted({r["p"] for r in got})]
        pairs = [(s["p"], s["shard"], s["idx"], s["key"], s["text1"]) for rows in by_partition for s in paired(rows)]
        return above_the_bytes(physical_plan(samples)), pairs

    with shard_samples(images, rows, rows.count(), per_shard=2, ids_per_range=1000) as samples:
        path, got = shards_of(samples)
    # The keys are broadcast to the scan of the bytes; the one exchange the bytes go through is by shard.
    assert path.index("BroadcastHashJoin") < path.index("Exchange") and path.count("Exchange") == 1, path
    # Samples numbered 0..3 in image_id order, two per shard, each shard in one partition, sorted, with its texts.
    keys = sorted(TEXTS)
    assert sorted((shard, idx, key, text) for _, shard, idx, key, text in got) == [
        (i // 2, i, k, TEXTS[k][0]) for i, k in enumerate(keys)
    ]
    assert one_partition_per_shard_in_order(got)
    # Where the keys do not fit under the broadcast threshold, the bytes go through a shuffle by image_id first;
    # the samples are the same.
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        with shard_samples(images, rows, rows.count(), per_shard=2, ids_per_range=1000) as samples:
            path, again = shards_of(samples)
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")
    assert path.count("Exchange") == 2 and "SortMergeJoin" in path, path
    assert sorted(r[1:] for r in again) == sorted(r[1:] for r in got) and one_partition_per_shard_in_order(again)


def test_unknown_scale_is_a_config_error(lakehouse: Lakehouse) -> None:
    cfg = make_cfg(lakehouse, scales=["huge"])
    with pytest.raises(ConfigError, match=r"export\.scales: unknown scale\(s\) huge; known: all, tiny"):
        run_export(lakehouse, cfg)


def test_release_texts_are_written_as_the_release_writes_them(lakehouse: Lakehouse) -> None:
    import webdataset as wds

    cfg = make_cfg(lakehouse, scales=["all"], formats=["parquet", "webdataset"], release_texts=True)
    write_inputs(lakehouse, cfg, corpus(), leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    run_export(lakehouse, cfg)
    root = Path(lakehouse.storage.root or "") / "exports" / "all"
    rows = {r["raw_image_url"]: r for r in pq.read_table(root / "parquet").to_pylist()}
    a = rows["http://x/a.jpg"]
    # Realistic texts lower-cased and word-tokenised, the synthetic text lower-cased only.
    assert (a["text1"], a["text2"], a["syn_text"]) == ("a dog runs on the beach .", "t2", "syn a")
    assert rows["http://x/h.gif"]["text1"] == "a gif stored as gif ."
    assert rows["http://x/b.jpg"]["syn_text"] == "syn b ✓"
    shards = sorted(str(p) for p in (root / "webdataset").glob("*.tar"))
    txt = {s["__key__"]: s["txt"].decode() for s in wds.WebDataset(shards, shardshuffle=False)}
    assert sorted(txt.values()) == sorted(r["text1"] for r in rows.values())
    # gold.dataset keeps the texts as they were written.
    kept = lakehouse.read(GOLD_DATASET).where("raw_image_url = 'http://x/a.jpg'").first()
    assert kept is not None and kept["text1"] == TEXTS["a"][0]


def test_the_dataset_card_loads_each_scale_with_datasets(
    lakehouse: Lakehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    cfg = make_cfg(lakehouse, scales=["all", "tiny"], formats=["parquet"])
    write_inputs(lakehouse, cfg, corpus(), leaf_parents={0: 0, 1: 0})
    run_balance(lakehouse, cfg)
    run_export(lakehouse, cfg)
    root = Path(lakehouse.storage.root or "") / "exports"
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "config_name: tiny" in readme and "| m |" in readme  # the scale, and the embedding model's row
    gold = lakehouse.read(GOLD_DATASET)
    for scale, rows in (("all", gold), ("tiny", gold.where("scale_tiny"))):
        loaded = datasets.load_dataset(str(root), name=scale, split="train", cache_dir=str(tmp_path / "cache"))
        assert loaded.column_names == RELEASE_COLUMNS
        want = sorted(tuple(r[c] for c in RELEASE_COLUMNS) for r in rows.collect())
        assert sorted(tuple(r[c] for c in RELEASE_COLUMNS) for r in loaded) == want, scale
