"""WebDataset shards written by udfs.webdataset and read back: img2dataset's json keys beside realsyn's own."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from udfs.ids import bytes_id
from udfs.webdataset import IMG2DATASET_FIELDS, JSON_FIELDS, paired, rows_of, write_shards


def encode(size: tuple[int, int], fmt: str, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


IMAGES = {  # name: (bytes as stored, silver.images format, (width, height))
    "jpeg": (encode((40, 30), "JPEG", (200, 10, 10)), "jpeg", (40, 30)),
    "png": (encode((17, 23), "PNG", (10, 200, 10)), "png", (17, 23)),
    "gif": (encode((9, 7), "GIF", (10, 10, 200)), "gif", (9, 7)),  # converted to PNG in the shard
}
TEXTS = {
    "jpeg": ("A dog runs on the beach.", "t2", "t3", "syn jpeg"),
    "png": ("Un café près du lac — 漢字", None, None, "syn png ✓"),
    "gif": (None, "only a second text", None, "syn gif"),
}


def rows() -> list[dict[str, Any]]:
    out = []
    for i, (name, (content, fmt, (width, height))) in enumerate(IMAGES.items()):
        text1, text2, text3, syn = TEXTS[name]
        image_id = bytes_id(content)
        out.append(
            {
                "shard": 0,
                "idx": i,
                "key": image_id,
                "content": content,
                "format": fmt,
                "width": width,
                "height": height,
                "image_id": image_id,
                "text1": text1,
                "text2": text2,
                "text3": text3,
                "syn_text": syn,
                "raw_image_url": f"https://example.org/{name}.img?size=large",
                "url_redacted": name == "png",
                "coarse_id": i,
                "leaf_id": 10 + i,
            }
        )
    return out


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of a shard, with the standard library."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member)
            assert data is not None
            samples.setdefault(key, {})[ext] = data.read()
    return samples


def test_json_has_img2dataset_keys_and_realsyn_keys(tmp_path: Path) -> None:
    written = list(write_shards(rows(), str(tmp_path)))
    assert pa.Table.from_batches(written).to_pylist()[0]["samples"] == 3
    samples = read_tar(tmp_path / "00000.tar")

    # The webdataset package reads the same samples (what img2dataset-era tooling and open_clip use).
    import webdataset as wds

    read = {s["__key__"]: s for s in wds.WebDataset([str(tmp_path / "00000.tar")], shardshuffle=False)}
    assert sorted(read) == sorted(samples)
    for key, members in samples.items():
        assert {ext: read[key][ext] for ext in members} == members

    by_key = {r["key"]: r for r in rows()}
    for name, (content, _, (width, height)) in IMAGES.items():
        row = by_key[bytes_id(content)]
        members = samples[row["key"]]
        meta = json.loads(members["json"].decode("utf-8"))
        assert set(IMG2DATASET_FIELDS) <= set(meta)
        # img2dataset's keys for a successfully downloaded sample, from the row.
        sha = hashlib.sha256(content).hexdigest()
        assert meta["url"] == f"https://example.org/{name}.img?size=large" == row["raw_image_url"]
        assert meta["caption"] == TEXTS[name][0]
        assert members["txt"] == (TEXTS[name][0] or "").encode("utf-8")  # caption and .txt: the same text
        assert meta["key"] == row["key"]
        assert meta["status"] == "success"
        assert meta["error_message"] is None
        assert (meta["width"], meta["height"]) == (width, height)
        assert (meta["original_width"], meta["original_height"]) == (width, height)
        assert meta["exif"] is None
        assert meta["sha256"] == sha and sha[:32] == meta["image_id"]  # hash of the stored (original) bytes
        # realsyn's own keys, unchanged.
        assert {f: meta[f] for f in JSON_FIELDS} == {f: row[f] for f in JSON_FIELDS}
        assert set(meta) == {"key", *JSON_FIELDS, *IMG2DATASET_FIELDS}
        # The image member: the stored bytes, or for GIF a PNG of the same size.
        if name == "gif":
            assert set(members) == {"png", "txt", "json"}
            with Image.open(io.BytesIO(members["png"])) as im:
                assert im.format == "PNG" and im.size == (width, height)
        else:
            assert members[{"jpeg": "jpg", "png": "png"}[name]] == content


def test_shards_are_byte_identical_across_writes(tmp_path: Path) -> None:
    for run in ("a", "b"):
        list(write_shards(rows(), str(tmp_path / run)))
    assert (tmp_path / "a" / "00000.tar").read_bytes() == (tmp_path / "b" / "00000.tar").read_bytes()


BYTES_PART = ("key", "content", "format", "width", "height")


def parts(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sample's two rows as the export's union gives them: its bytes, and its texts (the rest null in each)."""
    on_bytes = {k: (v if k in BYTES_PART or k in ("shard", "idx") else None) for k, v in row.items()}
    on_texts = {k: (None if k in BYTES_PART else v) for k, v in row.items()}
    return on_bytes, on_texts


def test_a_samples_texts_and_bytes_are_paired_in_either_order_across_batches() -> None:
    samples = rows()
    split = []
    for i, row in enumerate(samples):
        on_bytes, on_texts = parts(row)
        split += [on_bytes, on_texts] if i % 2 else [on_texts, on_bytes]
    # Batches cut between the two parts of a sample.
    batches = [pa.RecordBatch.from_pylist(split[:3]), pa.RecordBatch.from_pylist(split[3:])]
    assert list(paired(rows_of(batches))) == samples
    # A sample whose image (or texts) went missing is an error, not a short shard.
    with pytest.raises(ValueError, match=r"sample 1 \(.*\) has one part"):
        list(paired(split[:2] + split[3:]))
    with pytest.raises(ValueError, match=r"sample 2 \(.*\) has one part"):
        list(paired(split[:-1]))
