"""Exports of gold.dataset that training code reads: release parquet, WebDataset shards and Delta tables.

Layout, under ``export.output`` (default ``<storage.root>/exports``), one folder per exported scale (``all`` is the
whole gold.dataset, any other name a scale of ``balance.scales``):

- ``<scale>/parquet/``: parquet files with exactly the release's columns ``raw_image_url, text1, text2, text3,
  syn_text`` (RealSyn's published layout);
- ``<scale>/webdataset/``: ``00000.tar``, ``00001.tar``, ... in img2dataset's layout (:mod:`udfs.webdataset`:
  ``{key}.jpg`` the stored bytes, ``{key}.txt`` text1, ``{key}.json`` the rest and img2dataset's keys; key =
  image_id) with ``export.samples_per_shard`` samples per shard (the last one fewer), and ``sizes.json`` ({shard:
  samples}), which open_clip's training loader reads for the sample count;
- ``<scale>/delta/``: the gold.dataset rows of the scale as a Delta table (deletion vectors off), for deltalake,
  DuckDB's ``delta_scan`` and Spark.

``README.md`` in the export folder is the dataset card (:mod:`realsyn.dataset_card`), rewritten on every run: its
``configs`` name each finished scale's parquet files, so ``datasets.load_dataset(<folder>, name=<scale>)`` reads
it; the rest says what made the data.

With ``export.release_texts`` every format gets the texts as the published release writes them (text1..text3
lower-cased and word-tokenised, syn_text lower-cased; :mod:`udfs.release_text`), so realsyn output mixes with it.

Samples are numbered in image_id order (ids are hashes, so the order is random with respect to content): ids are
range-partitioned and sorted, each partition's count is collected (one number per range of
``export.ids_per_range`` ids) and prefix sums give every id its global index, so shard k holds indices
[k * samples_per_shard, (k + 1) * samples_per_shard). Rows are then grouped by shard and each Spark task writes
its own shards (mapInArrow); a shard appears under its final name only once complete. A rerun writes the same
shards with the same bytes, removes shards a previous run left beyond the new count, and replaces sizes.json
last. Parquet and Delta are overwritten in one commit each.

Each scale's folder holds ``_export.json`` once its export is finished: the versions of gold.dataset and
silver.images and the export settings it was made from, and what it wrote. A run whose tables and settings are
those of the manifest writes nothing to that folder (a pipeline rerun with nothing new leaves the exports as they
are); any other run removes the manifest first and writes it again last, so a killed export is redone.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from realsyn.config import ConfigError, registry_path
from realsyn.config_sections import Config
from realsyn.contracts import BRONZE_DOCUMENTS, FUNNEL, GOLD_DATASET, SILVER_IMAGES, scale_column
from realsyn.dataset_card import CardFacts, ModelUsed, card
from realsyn.funnel_figure import STAGE_ORDER
from realsyn.spark import session_conf
from realsyn.tables import Lakehouse, create_table_at
from udfs.models import ModelSpec, load_registry
from udfs.webdataset import JSON_FIELDS, RESULT_SCHEMA, paired, rows_of, shard_name, write_shards

RELEASE_COLUMNS = ["raw_image_url", "text1", "text2", "text3", "syn_text"]
ALL = "all"
CARD = "README.md"  # in the export folder: the dataset card (realsyn.dataset_card)
MANIFEST = "_export.json"  # in each scale's folder: the table versions and settings it was exported from
VLM_ROLE = "vision-language model (captioner and llm in one)"  # the dataset card's role of a vlm entry
# The writer's Arrow batches are cut at this many bytes (Spark >= 4.0; rows per batch alone would let 10,000 images
# of a few hundred KB each into one Python worker at once).
ARROW_BYTES_CONF = "spark.sql.execution.arrow.maxBytesPerBatch"
WRITER_BATCH_BYTES = 64 << 20
_LOCAL_BITS = 33  # monotonically_increasing_id: partition id in the upper 31 bits, row in partition in the lower 33


def export_root(cfg: Config) -> str:
    """Folder or URI that holds the exports: ``export.output``, else ``<storage.root>/exports``."""
    if cfg.export.output:
        root = cfg.export.output.rstrip("/")
    elif cfg.storage.root is None:
        raise ConfigError("export.output: must be set when tables live in a metastore (storage.catalog)")
    else:
        root = f"{cfg.storage.root.rstrip('/')}/exports"
    # Spark tasks write the shards: a local folder is made absolute so that every task means the same one.
    return root if "://" in root or root.startswith("dbfs:") else str(Path(root).resolve())


def scales_to_export(cfg: Config, asked: Sequence[str] | None = None) -> list[str]:
    """The scales named by ``asked``, else ``export.scales``, else every configured scale (``all`` if none)."""
    names = list(asked or cfg.export.scales or cfg.balance.scales or [ALL])
    unknown = [n for n in names if n != ALL and n not in cfg.balance.scales]
    if unknown:
        known = ", ".join([ALL, *cfg.balance.scales])
        raise ConfigError(f"export.scales: unknown scale(s) {', '.join(unknown)}; known: {known}")
    return names


@dataclass(frozen=True)
class ScaleExport:
    """What one scale's export wrote."""

    scale: str
    rows: int
    shards: int
    shard_bytes: int
    seconds: float
    formats: tuple[str, ...]
    unchanged: bool = False  # the folder already held this export of the same table versions: nothing written


@dataclass(frozen=True)
class ExportSummary:
    """What one export run wrote, per scale."""

    root: str
    scales: tuple[ScaleExport, ...]

    def __str__(self) -> str:
        parts = "; ".join(
            f"{s.scale}: {s.rows:,} rows as {'/'.join(s.formats)}"
            + (
                f" ({s.shards} shard{'s' * (s.shards != 1)}, {s.shard_bytes / 1e6:,.1f} MB)"
                if "webdataset" in s.formats
                else ""
            )
            + (" unchanged" if s.unchanged else f" in {s.seconds:,.1f} s")
            for s in self.scales
        )
        return f"export to {self.root}: {parts or 'nothing'}"


def scale_rows(dataset: DataFrame, scale: str) -> DataFrame:
    """The gold.dataset rows of ``scale`` (``all``: every row)."""
    return dataset if scale == ALL else dataset.filter(F.col(scale_column(scale)))


def numbered(ids: DataFrame, ids_per_range: int, n: int) -> DataFrame:
    """(image_id, idx): every id's 0-based index in image_id order, without a single-partition window."""
    ranges = max(1, math.ceil(n / ids_per_range))
    sorted_ids = (
        ids.repartitionByRange(ranges, "image_id")
        .sortWithinPartitions("image_id")
        .withColumn("_mid", F.monotonically_increasing_id())
        .localCheckpoint(eager=True)
    )
    part = F.shiftright(F.col("_mid"), _LOCAL_BITS)
    counts = sorted_ids.groupBy(part.alias("_part")).count().orderBy("_part").collect()
    offsets, total = [], 0
    for row in counts:
        offsets.append((int(row["_part"]), total))
        total += int(row["count"])
    spark = ids.sparkSession
    offset_df = spark.createDataFrame(offsets, "_part long, _offset long")
    local = F.col("_mid").bitwiseAND(F.lit((1 << _LOCAL_BITS) - 1))
    return (
        sorted_ids.withColumn("_part", part)
        .join(F.broadcast(offset_df), "_part")
        .select("image_id", (F.col("_offset") + local).alias("idx"))
    )


def shard_count(n: int, per_shard: int) -> int:
    """Shards of ``n`` samples, ``per_shard`` each (the last one fewer); one, empty, for no samples."""
    return max(1, math.ceil(n / per_shard))


@contextmanager
def shard_samples(
    images: DataFrame, rows: DataFrame, n: int, per_shard: int, ids_per_range: int
) -> Iterator[DataFrame]:
    """The WebDataset samples of ``rows`` (the ``n`` gold.dataset rows to export) and their bytes from ``images``
    (silver.images), as :func:`udfs.webdataset.paired` reads them: every sample in two rows, its texts and its
    bytes, next to each other, each shard in one partition, sorted by (shard, idx). Run the frame inside the block.

    The bytes of an exported image cross the network once, on their way to the task that writes its shard, and the
    bytes of the images not exported not at all: the samples' keys (image_id, shard, idx; a few dozen bytes each)
    are cached, so Spark knows their size and broadcasts them to the scan of the images where they fit under
    ``spark.sql.autoBroadcastJoinThreshold`` (above it the bytes go through one more shuffle, by image_id). Texts
    and bytes then go to their shard in one repartition of their union: no join of the two, which would shuffle
    the bytes again by the join's key.
    """
    keys = (
        numbered(rows.select("image_id"), ids_per_range, n)
        .withColumn("shard", (F.col("idx") / per_shard).cast("long"))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    try:
        keys.count()
        on_bytes = (
            images.select("image_id", "content", "format", "width", "height")
            .join(keys, "image_id")
            .select("shard", "idx", F.col("image_id").alias("key"), "content", "format", "width", "height")
        )
        on_texts = rows.select(*JSON_FIELDS).join(keys, "image_id")
        yield (
            on_bytes.unionByName(on_texts, allowMissingColumns=True)
            .repartition(shard_count(n, per_shard), "shard")
            .sortWithinPartitions("shard", "idx")
        )
    finally:
        keys.unpersist()


def write_webdataset(lakehouse: Lakehouse, rows: DataFrame, n: int, folder: str, cfg: Config) -> tuple[int, int]:
    """Write the ``n`` rows of ``rows`` (gold.dataset rows) as shards under ``folder``; returns (shards, bytes)."""
    import fsspec

    per_shard = cfg.export.samples_per_shard
    n_shards = shard_count(n, per_shard)
    target = folder

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return write_shards(paired(rows_of(batches)), target)

    with (
        shard_samples(lakehouse.read(SILVER_IMAGES), rows, n, per_shard, cfg.export.ids_per_range) as samples,
        session_conf(rows.sparkSession, ARROW_BYTES_CONF, str(WRITER_BATCH_BYTES)),
    ):
        written = samples.mapInArrow(write, from_arrow_schema(RESULT_SCHEMA)).collect()
    sizes = {r["shard"]: int(r["samples"]) for r in sorted(written, key=lambda r: r["shard"])}
    fs, base = fsspec.core.url_to_fs(folder)
    fs.makedirs(base, exist_ok=True)
    expected = {shard_name(i) for i in range(n_shards)} if n else set()
    if set(sizes) != expected:
        raise RuntimeError(f"webdataset export wrote shards {sorted(sizes)}, expected {sorted(expected)}")
    for path in fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if (name.endswith(".tar") and name not in sizes) or ".tar.tmp-" in name:
            fs.rm(path)  # a shard of an earlier, larger export, or a partial one a killed task left
    tmp = f"{base}/sizes.json.tmp"
    with fs.open(tmp, "w") as f:
        json.dump(sizes, f, indent=1, sort_keys=True)
    fs.mv(tmp, f"{base}/sizes.json")
    return len(sizes), sum(int(r["bytes"]) for r in written)


def as_released(rows: DataFrame) -> DataFrame:
    """``rows`` with their texts written as the published release writes them: text1..text3 lower-cased and
    word-tokenised (:func:`udfs.release_text.realistic`), syn_text lower-cased."""

    @F.pandas_udf(T.StringType())  # type: ignore[call-overload]
    def realistic(texts: pd.Series) -> pd.Series:
        from udfs.release_text import realistic_series

        return realistic_series(texts)

    texts = {c: realistic(F.col(c)) for c in RELEASE_COLUMNS if c.startswith("text")}
    return rows.withColumns({**texts, "syn_text": F.lower("syn_text")})


def write_delta(lakehouse: Lakehouse, rows: DataFrame, path: str) -> None:
    """Overwrite the Delta table at ``path`` with ``rows`` (created with realsyn's table properties)."""
    create_table_at(lakehouse.spark, path, rows.schema)
    rows.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def run_export(lakehouse: Lakehouse, cfg: Config, scales: Sequence[str] | None = None) -> ExportSummary:
    """Export the asked scales of gold.dataset (default: ``export.scales``) in every ``export.formats``."""
    root = export_root(cfg)
    names = scales_to_export(cfg, scales)
    if not lakehouse.exists(GOLD_DATASET):
        raise RuntimeError(f"{GOLD_DATASET} does not exist: run the balance stage (realsyn-balance) first")
    dataset = lakehouse.read(GOLD_DATASET)
    missing = [n for n in names if n != ALL and scale_column(n) not in dataset.columns]
    if missing:
        raise RuntimeError(f"{GOLD_DATASET} has no column for scale(s) {', '.join(missing)}: rerun the balance stage")
    sources = {t.name: lakehouse.version(t) for t in (GOLD_DATASET, SILVER_IMAGES)}
    out = []
    for name in names:
        start = time.perf_counter()
        folder = f"{root}/{name}"
        manifest = {"scale": name, "table_versions": sources, "export": cfg.export.model_dump(mode="json")}
        done = read_manifest(folder)
        if done is not None and done["source"] == manifest:
            n, shards, shard_bytes = (int(v) for v in done["written"])
            out.append(ScaleExport(name, n, shards, shard_bytes, 0.0, tuple(cfg.export.formats), unchanged=True))
            continue
        remove_manifest(folder)  # from here until the new one is written, the folder is not a finished export
        rows = scale_rows(dataset, name)
        if cfg.export.release_texts:
            rows = as_released(rows)
        rows = rows.localCheckpoint(eager=True)
        n, shards, shard_bytes = rows.count(), 0, 0
        if "parquet" in cfg.export.formats:
            rows.select(*RELEASE_COLUMNS).write.mode("overwrite").parquet(f"{folder}/parquet")
        if "webdataset" in cfg.export.formats:
            shards, shard_bytes = write_webdataset(lakehouse, rows, n, f"{folder}/webdataset", cfg)
        if "delta" in cfg.export.formats:
            write_delta(lakehouse, rows, f"{folder}/delta")
        write_manifest(folder, {"source": manifest, "written": [n, shards, shard_bytes]})
        out.append(ScaleExport(name, n, shards, shard_bytes, time.perf_counter() - start, tuple(cfg.export.formats)))
    write_card(root, card_facts(lakehouse, cfg, root))
    return ExportSummary(root, tuple(out))


def models_used(lineage: Sequence[Mapping[str, Any]], registry: Mapping[str, ModelSpec]) -> list[ModelUsed]:
    """The models of the card from gold.dataset's key columns (``lineage``: its distinct rows), by role: the
    encoder (model_id), captioner and LLM; a vlm entry (vlm mode, where it is both captioner_id and llm_id:
    GenerateConfig.key) once, as :data:`VLM_ROLE`. A name the registry no longer has is listed without a source."""
    models: list[ModelUsed] = []
    for role, column in (("image and text encoder", "model_id"), ("captioner", "captioner_id"), ("llm", "llm_id")):
        for name in sorted({r[column] for r in lineage if r[column]}):
            spec = registry.get(name)
            shown = VLM_ROLE if spec is not None and spec.kind == "vlm" else role
            if any(m.role == shown and m.name == name for m in models):
                continue
            source = None if spec is None else spec.source or spec.pretrained or spec.architecture
            models.append(ModelUsed(shown, name, source, None if spec is None else spec.revision,
                                    spec is not None and spec.random_init))  # fmt: skip
    return models


def card_facts(lakehouse: Lakehouse, cfg: Config, root: str) -> CardFacts:
    """What the dataset card says: the finished parquet exports under ``root``, and what made gold.dataset."""
    scales = {}
    for name in scales_to_export(cfg):
        done = read_manifest(f"{root}/{name}")
        if done is not None and "parquet" in done["source"]["export"]["formats"]:
            scales[name] = int(done["written"][0])
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    funnel = []
    if lakehouse.exists(FUNNEL):
        rows = lakehouse.read(FUNNEL).collect()
        rows.sort(key=lambda r: (order.get(r["stage"], len(order)), str(r["model_id"]), r["step_index"]))
        funnel = [(r["stage"], r["step"], int(r["rows_in"]), int(r["rows_out"])) for r in rows]
    lineage = lakehouse.read(GOLD_DATASET).select("model_id", "captioner_id", "llm_id", "prompt_version").distinct()
    used = lineage.collect()
    models = models_used([r.asDict() for r in used], load_registry(registry_path(cfg.embed.registry)))
    sources = []
    if lakehouse.exists(BRONZE_DOCUMENTS):
        by_source = lakehouse.read(BRONZE_DOCUMENTS).groupBy("source", "layout").count().collect()
        sources = sorted((r["source"], r["layout"], int(r["count"])) for r in by_source)
    return CardFacts(
        scales=scales,
        funnel=funnel,
        models=models,
        prompt_versions=sorted({r["prompt_version"] for r in used if r["prompt_version"]}),
        balance={
            **cfg.balance.model_dump(mode="json", exclude={"scales"}),
            "scales": {name: scale.settings() for name, scale in cfg.balance.scales.items()},
        },
        sources=sources,
        release_texts=cfg.export.release_texts,
    )


def write_card(root: str, facts: CardFacts) -> None:
    """Write the dataset card ``README.md`` into ``root`` (replaced whole)."""
    import fsspec

    with fsspec.open(f"{root}/{CARD}", "w", encoding="utf-8") as f:
        f.write(card(facts))


def read_manifest(folder: str) -> dict[str, Any] | None:
    """The manifest of the finished export in ``folder`` (what it was made from, what it wrote), or None."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(f"{folder}/{MANIFEST}")
    if not fs.exists(base):
        return None
    with fs.open(base, "r") as f:
        manifest: dict[str, Any] = json.load(f)
    return manifest


def write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    """Mark the export in ``folder`` finished (written last, after every format)."""
    import fsspec

    with fsspec.open(f"{folder}/{MANIFEST}", "w") as f:
        json.dump(manifest, f, sort_keys=True)


def remove_manifest(folder: str) -> None:
    """Unmark ``folder`` before writing into it, so that a killed export is never taken as finished."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(f"{folder}/{MANIFEST}")
    if fs.exists(base):
        fs.rm(base)
