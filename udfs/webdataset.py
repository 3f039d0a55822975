"""WebDataset shards in img2dataset's layout, written from Arrow batches (pure Python, no Spark).

Each sample is three members of a tar: ``{key}.{ext}`` (the stored image bytes), ``{key}.txt`` (text1) and
``{key}.json`` (the four texts, ids, clusters, source URL, plus the keys img2dataset writes for a successful
sample: see :func:`sample_json`). ``ext`` is ``jpg`` for JPEG, ``png`` / ``webp`` for
those formats (bytes as stored: webdataset's decoders and open_clip's loader read all three); an image in any
other format (GIF, BMP, TIFF, ...) is converted once to PNG, losslessly, because open_clip's loader only looks for
jpg / jpeg / png / webp. Members get mtime 0 and fixed owners, so the same rows give byte-identical shards.

A shard is written under a temporary name and renamed when complete, so a reader (or a rerun after a crash)
never sees half a shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

# Pillow format name -> extension of the bytes as stored.
STORED_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
JSON_FIELDS = (
    "image_id",
    "text1",
    "text2",
    "text3",
    "syn_text",
    "raw_image_url",
    "url_redacted",
    "coarse_id",
    "leaf_id",
)
# Keys of img2dataset's per-sample json (downloader.py's ``meta`` of a successful sample, with its defaults
# ``extract_exif=True`` and ``compute_hash="sha256"``), which tools written for img2dataset shards read.
IMG2DATASET_FIELDS = (
    "url",
    "caption",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
)
RESULT_SCHEMA = pa.schema([("shard", pa.string()), ("samples", pa.int64()), ("bytes", pa.int64())])


def shard_name(index: int) -> str:
    """File name of shard ``index`` (img2dataset's five-digit numbering)."""
    return f"{index:05d}.tar"


def image_member(content: bytes, fmt: str | None) -> tuple[str, bytes]:
    """(extension, bytes) of an image in a shard: stored bytes for JPEG / PNG / WebP, else a PNG conversion."""
    ext = STORED_EXTENSIONS.get((fmt or "").upper())
    if ext is not None:
        return ext, content
    from PIL import Image

    with Image.open(io.BytesIO(content)) as im:
        buf = io.BytesIO()
        frame = im.convert("RGBA") if im.mode in ("P", "PA", "LA") else im
        frame = frame if frame.mode in ("RGB", "RGBA", "L", "I;16") else frame.convert("RGB")
        frame.save(buf, "PNG")
    return "png", buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def sample_json(row: dict[str, Any]) -> bytes:
    """The ``.json`` member of one sample, UTF-8: its key, the JSON_FIELDS of the row and img2dataset's keys.

    img2dataset's keys, as it writes them for a sample it downloaded successfully:

    - ``url``: ``raw_image_url`` (the URL as exported, secrets redacted);
    - ``caption``: ``text1``, the top-ranked retrieved text, which is also the ``.txt`` member (img2dataset's
      caption and ``.txt`` are the same text; the other texts stay under their own keys);
    - ``status`` ``"success"``, ``error_message`` null (only kept images are exported);
    - ``width``, ``height`` and ``original_width``, ``original_height``: the stored image's size (realsyn does not
      resize, so both pairs are equal);
    - ``exif``: null (img2dataset's value when its extraction fails; realsyn does not extract EXIF);
    - ``sha256``: hex SHA-256 of the stored bytes (``content``), as img2dataset hashes the downloaded bytes: for a
      format converted to PNG it is the hash of the original, and its first 32 digits are ``image_id``.
    """
    content = row.get("content")
    width, height = _int_or_none(row.get("width")), _int_or_none(row.get("height"))
    doc = {
        "key": row["key"],
        **{f: row.get(f) for f in JSON_FIELDS},
        "url": row.get("raw_image_url"),
        "caption": row.get("text1"),
        "status": "success",
        "error_message": None,
        "width": width,
        "height": height,
        "original_width": width,
        "original_height": height,
        "exif": None,
        "sha256": None if content is None else hashlib.sha256(content).hexdigest(),
    }
    return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8")


class _Shard:
    def __init__(self, folder: str, index: int) -> None:
        import fsspec

        self.fs, base = fsspec.core.url_to_fs(folder)
        self.final = f"{base.rstrip('/')}/{shard_name(index)}"
        self.tmp = f"{self.final}.tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(base, exist_ok=True)
        self.file = self.fs.open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self.samples = 0
        self.name = shard_name(index)

    def write(self, row: dict[str, Any]) -> None:
        ext, image = image_member(row["content"], row.get("format"))
        key = row["key"]
        _add(self.tar, f"{key}.{ext}", image)
        _add(self.tar, f"{key}.txt", (row["text1"] or "").encode("utf-8"))
        _add(self.tar, f"{key}.json", sample_json(row))
        self.samples += 1

    def close(self) -> tuple[str, int, int]:
        self.tar.close()
        self.file.close()
        size = int(self.fs.size(self.tmp))
        self.fs.mv(self.tmp, self.final)
        return self.name, self.samples, size


def rows_of(batches: Iterable[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
    """The rows of ``batches``, one dict each."""
    for batch in batches:
        yield from batch.to_pylist()


def paired(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One sample per two adjacent rows of ``rows`` (sorted by (``shard``, ``idx``)) that share (shard, idx): the
    sample's texts and its bytes, each row null where the other holds a value. A sample with one part only is an
    error: its texts or its image went missing between the tables."""
    pending: dict[str, Any] | None = None
    for row in rows:
        if pending is None:
            pending = row
        elif (row["shard"], row["idx"]) == (pending["shard"], pending["idx"]):
            yield {k: pending.get(k) if pending.get(k) is not None else v for k, v in row.items()}
            pending = None
        else:
            raise _one_part(pending)
    if pending is not None:
        raise _one_part(pending)


def _one_part(row: dict[str, Any]) -> ValueError:
    return ValueError(f"sample {row['idx']} ({row.get('key') or row.get('image_id')}) has one part")


def write_shards(rows: Iterable[dict[str, Any]], folder: str) -> Iterator[pa.RecordBatch]:
    """Write rows sorted by (``shard``, ``idx``) into one tar per shard index under ``folder``.

    Keys: ``shard`` (int), ``key``, ``content`` (bytes), ``format``, ``width``, ``height`` (of the stored image)
    and the JSON_FIELDS. Yields one (shard, samples, bytes) row per shard written. Rows of one shard must all come
    to the same call.
    """
    current: _Shard | None = None
    for row in rows:
        if current is None or current.name != shard_name(int(row["shard"])):
            if current is not None:
                yield _written(current.close())
            current = _Shard(folder, int(row["shard"]))
        current.write(row)
    if current is not None:
        yield _written(current.close())


def _written(shard: tuple[str, int, int]) -> pa.RecordBatch:
    name, samples, size = shard
    return pa.RecordBatch.from_pylist([{"shard": name, "samples": samples, "bytes": size}], schema=RESULT_SCHEMA)
