"""Ingest of one very long document: alone, and beside a second input; the cost must stay linear in the line.

Input: one MMC4 line with N texts (``Text <i> of a long page.``), and a second MMC4 file with one short document.
Timed side by side in one Spark session (local[2]): ``realsyn.stages.ingest.run_ingest`` into a fresh lake with the long
document's input alone, then with both inputs, then both again at N / 4 (each after one warm-up run of its kind
at a small N). Checked: every text of the long document is in bronze.texts.

Two inputs are unioned before validation; Spark then used to inline the line's JSON parse into the per-text
lambda (one parse per text: N x line length). The last line is ``ingest_two_inputs_ratio: <t(both) / t(alone)>``
at N (about 1 once the cost is linear; ``--quick``: N = 20,000).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_inputs(folder: Path, n: int) -> tuple[Path, Path]:
    """The long document's file and the second input's file under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    long_doc = {"url": f"https://long.example/{n}", "text_list": [f"Text {i} of a long page." for i in range(n)]}
    long_doc["image_info"] = []
    short = {"url": "https://short.example/", "text_list": ["A short page."], "image_info": []}
    (folder / "long").mkdir(exist_ok=True)
    (folder / "short").mkdir(exist_ok=True)
    (folder / "long" / "a.jsonl").write_text(json.dumps(long_doc) + "\n")
    (folder / "short" / "a.jsonl").write_text(json.dumps(short) + "\n")
    return folder / "long", folder / "short"


def timed_ingest(spark: object, root: Path, inputs: list[Path], n: int) -> float:
    """Seconds of one run_ingest of ``inputs`` into a fresh lake under ``root``; checks the long document's texts."""
    from realsyn.config_sections import Config, IngestConfig, IngestInput, StorageConfig
    from realsyn.contracts import BRONZE_TEXTS
    from realsyn.stages.ingest import run_ingest
    from realsyn.tables import Lakehouse

    storage = StorageConfig(root=str(root))
    items = [IngestInput(path=str(p), layout="mmc4", source=p.name) for p in inputs]
    cfg = Config(storage=storage, ingest=IngestConfig(inputs=items, max_texts_per_document=max(n, 10)))
    lakehouse = Lakehouse(spark, storage)  # type: ignore[arg-type]
    start = time.perf_counter()
    run_ingest(lakehouse, cfg)
    seconds = time.perf_counter() - start
    texts = lakehouse.read(BRONZE_TEXTS).count()
    expected = n + (1 if len(inputs) > 1 else 0)
    if texts != expected:
        raise SystemExit(f"bronze.texts holds {texts} rows, expected {expected}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=100_000, help="texts in the long document")
    parser.add_argument("--quick", action="store_true", help="20,000 texts")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.texts

    from realsyn.config_sections import SparkConfig
    from realsyn.spark import get_spark

    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"}
    spark = get_spark(SparkConfig(master="local[2]", conf={**conf, "spark.databricks.delta.snapshotPartitions": "2"}))
    spark.sparkContext.setLogLevel("ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        warm_long, warm_short = write_inputs(base / "warm", 1_000)
        timed_ingest(spark, base / "lake-warm-1", [warm_long], 1_000)
        timed_ingest(spark, base / "lake-warm-2", [warm_long, warm_short], 1_000)
        rows = []
        for size in (n // 4, n):
            long_path, short_path = write_inputs(base / f"in-{size}", size)
            alone = timed_ingest(spark, base / f"lake-{size}-1", [long_path], size)
            both = timed_ingest(spark, base / f"lake-{size}-2", [long_path, short_path], size)
            rows.append((size, alone, both))
    spark.stop()
    print(f"{'texts':>9} {'alone s':>9} {'two inputs s':>13} {'ratio':>7}")
    for size, alone, both in rows:
        print(f"{size:>9,} {alone:>9.1f} {both:>13.1f} {both / alone:>7.2f}")
    (_, _, small_both), (_, alone, both) = rows
    print(f"two inputs, time growth from N/4 to N: {both / small_both:.2f}x (4x texts)")
    print(f"ingest_two_inputs_ratio: {both / alone:.2f}")


if __name__ == "__main__":
    main()
