"""The perceptual hash computed by the fetch stage (``fetch.perceptual_hash`` on) against computed by extract_images
from the bytes (off): fetch + extract_images both ways on the same generated corpus, side by side.

With ``fetch.perceptual_hash`` on, the fetch stage stores the perceptual hash (``udfs.images.phash``) of each
accepted image that extract_images' quality filter keeps, so that extract_images reads the bytes once (the kept
images' rows) instead of twice (the hash of each distinct image, then the rows). Both ways are timed on one Spark
session, on copies of one ingested lake:

- off: the fetch stage stores no hash (as an earlier version wrote its rows), then ``run_extract_images`` hashes the
  bytes of every distinct image;
- on: the fetch stage stores the hashes, then ``run_extract_images`` reads them.

Both ways must give the same silver.images and silver.image_rejects (the same function of the same bytes), or the script
fails. Per way and stage: seconds, the CPU seconds of Spark's JVM and of its Python workers (psutil), and Spark's
shuffle bytes written (its event log); ``--rounds`` alternates the order. Last line:
``fetch_extract_images_on_over_off: <seconds on / seconds off>`` (fetch + extract_images, all rounds).
``--quick``: 1,000 documents instead of ``--documents``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.extract import cpu_seconds  # noqa: E402
from bench.scaling import event_log_metrics, generated_lake, side_by_side_args  # noqa: E402
from realsyn.config_sections import Config  # noqa: E402
from realsyn.contracts import BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS, SILVER_IMAGE_REJECTS, SILVER_IMAGES  # noqa: E402
from realsyn.stages.extract_images import run_extract_images  # noqa: E402
from realsyn.stages.fetch import run_fetch  # noqa: E402
from realsyn.tables import Lakehouse  # noqa: E402

WAYS = ("off", "on")
STAGES = ("fetch", "extract_images")


def with_fetch_hash(cfg: Config, on: bool) -> Config:
    """``cfg`` with ``fetch.perceptual_hash`` set to ``on``."""
    return cfg.model_copy(update={"fetch": cfg.fetch.model_copy(update={"perceptual_hash": on})})


def copy_bronze(base: Lakehouse, lake: Path) -> Lakehouse:
    """A lake at ``lake`` holding a copy of ``base``'s ingested tables (path tables: their logs are relative)."""
    if lake.exists():
        shutil.rmtree(lake)
    for table in (BRONZE_DOCUMENTS, BRONZE_IMAGE_REFS):
        target = lake / str(table).replace(".", "/")
        shutil.copytree(base.location(table), target)
    return Lakehouse(base.spark, base.storage.model_copy(update={"root": str(lake)}))


def timed(run: Callable[[], object]) -> tuple[float, dict[str, float], tuple[float, float]]:
    """(seconds, CPU seconds by process kind, wall-clock window) of ``run()``."""
    cpu0, t0, w0 = cpu_seconds(), time.perf_counter(), time.time()
    run()
    seconds, cpu1, w1 = time.perf_counter() - t0, cpu_seconds(), time.time()
    return seconds, {kind: cpu1[kind] - cpu0[kind] for kind in cpu0}, (w0, w1)


def outcome(lakehouse: Lakehouse) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """silver.images (id, URLs, documents) and silver.image_rejects (id, step, reason, duplicate_of), sorted."""
    images = lakehouse.read(SILVER_IMAGES).select("image_id", "url_ids", "doc_ids").collect()
    rejects = lakehouse.read(SILVER_IMAGE_REJECTS).select("reject_id", "step", "reason", "duplicate_of").collect()
    return sorted(tuple(r) for r in images), sorted(tuple(r) for r in rejects)


def main(argv: list[str] | None = None) -> None:
    args = side_by_side_args(__doc__.splitlines()[0], "off/on", argv)
    cfg, base, events = generated_lake(args, "realsyn-hash-at-fetch-")
    work, spark, n = Path(cfg.storage.root).parent, base.spark, args.documents
    refs = base.read(BRONZE_IMAGE_REFS).count()
    print(f"{n:,} generated documents, {refs:,} image references, Spark {spark.sparkContext.master}")

    seconds = {(way, stage): 0.0 for way in WAYS for stage in STAGES}
    cpu: dict[tuple[str, str], dict[str, float]] = {}
    windows: dict[str, tuple[float, float]] = {}
    results: dict[str, tuple[list[tuple[object, ...]], list[tuple[object, ...]]]] = {}
    for r in range(args.rounds):
        for way in WAYS if r % 2 == 0 else WAYS[::-1]:
            lakehouse = copy_bronze(base, work / f"lake-{way}")
            fetch_cfg = with_fetch_hash(cfg, way == "on")
            for stage, run in (
                ("fetch", lambda lh=lakehouse, c=fetch_cfg: run_fetch(lh, c)),
                ("extract_images", lambda lh=lakehouse: run_extract_images(lh, cfg)),
            ):
                s, used, window = timed(run)
                seconds[way, stage] += s
                cpu[way, stage] = {k: cpu.get((way, stage), {}).get(k, 0.0) + v for k, v in used.items()}
                windows[f"{way}/{stage}/{r}"] = window
                print(f"  round {r + 1} {way:6} {stage:14} {s:7.1f} s", flush=True)
            if results.setdefault(way, outcome(lakehouse)) != outcome(lakehouse):
                raise SystemExit(f"{way}: two rounds extracted different images or rejects")
    spark.stop()
    if results["off"] != results["on"]:
        raise SystemExit("the two ways extracted different images or rejects")
    images, rejects = results["on"]
    print(f"both ways: {len(images):,} images kept, {len(rejects):,} rejects, the same rows")

    metrics = event_log_metrics(events, windows)
    total = {}
    for way in WAYS:
        total[way] = sum(seconds[way, stage] for stage in STAGES)
        for stage in STAGES:
            shuffle = sum(m["shuffle_write_bytes"] for k, m in metrics.items() if k.startswith(f"{way}/{stage}/"))
            used = cpu[way, stage]
            print(
                f"{way:6} {stage:14} {seconds[way, stage]:7.1f} s  CPU s: JVM {used['JVM']:.1f}, "
                f"Python workers {used['Python workers']:.1f}  shuffle written {shuffle / 1e6:,.1f} MB"
            )
        print(f"{way:6} {'both':14} {total[way]:7.1f} s")
    print(f"fetch_extract_images_on_over_off: {total['on'] / total['off']:.3f}")


if __name__ == "__main__":
    main()
