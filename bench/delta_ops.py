"""The fixed cost of one Delta operation on a small table, as every stage pays it on local Spark.

On the demo corpus a stage's seconds are mostly fixed cost: the 12-document pipeline runs some 1,300 Spark jobs,
about 500 of them labelled as Delta's own in Spark's event log (a table's log state, the files a query reads, a
MERGE's steps; a MERGE is about nine jobs), most of the rest the stages' writes and counts. This benchmark
times the table operations the stages are made of, in one warm session with the Spark settings of ``--conf``
(conf/local.yaml), each over ``--repeat`` operations on tables of 20 rows of ``bronze.texts``: creating an
empty table as its contract declares it, the first ``Lakehouse.insert_new`` into it (a MERGE), a later
``insert_new``, ``Lakehouse.append`` of the same rows (a write with no MERGE), ``Lakehouse.version`` (a listing of
the table's log) beside the history query it replaced, and a count. A warm-up round runs first, so the JVM's start
and first compilations are outside the figures.

Prints each operation's mean seconds and, last, ``merge_over_append: <insert_new / append>``: what the MERGE that
makes every write idempotent costs over a blind write of the same rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    """Time each operation over ``--repeat`` tables or rows in one session; print the MERGE / append ratio last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 operations of each kind instead of --repeat")
    parser.add_argument("--repeat", type=int, default=12)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    args = parser.parse_args()
    repeat = 3 if args.quick else args.repeat

    from pyspark.sql import DataFrame

    from realsyn.config import load_config
    from realsyn.contracts import BRONZE_TEXTS
    from realsyn.spark import get_spark
    from realsyn.tables import Lakehouse

    with tempfile.TemporaryDirectory(prefix="realsyn-delta-ops-") as tmp:
        cfg = load_config(args.conf, [f"storage.root={tmp}/lake", 'spark.conf.spark.ui.showConsoleProgress="false"'])
        spark = get_spark(cfg.spark)
        spark.sparkContext.setLogLevel("ERROR")

        def rows(i: int) -> DataFrame:
            return spark.createDataFrame(
                [(f"doc-{i}", j, f"text {j} of document {i}") for j in range(20)],
                "doc_id string, position int, text string",
            )

        def lakehouse(name: str) -> Lakehouse:
            return Lakehouse(spark, cfg.storage.model_copy(update={"root": f"{tmp}/{name}"}))

        def timed(label: str, n: int, op: Callable[[int], object]) -> float:
            start = time.perf_counter()
            for i in range(n):
                op(i)
            mean = (time.perf_counter() - start) / n
            print(f"{label:<40} {mean:7.3f} s", flush=True)
            return mean

        # Warm-up: a table created, merged into twice, appended to, read.
        warm = lakehouse("warm")
        for i in range(2):
            warm.insert_new(BRONZE_TEXTS, rows(i))
        warm.append(BRONZE_TEXTS, rows(2))
        warm.version(BRONZE_TEXTS)
        warm.read(BRONZE_TEXTS).count()

        print(f"mean seconds per operation, {repeat} of each, 20-row writes to bronze.texts ({args.conf.name}):")
        fresh = [lakehouse(f"fresh-{i}") for i in range(repeat)]
        timed("create an empty table", repeat, lambda i: fresh[i].create_if_absent(BRONZE_TEXTS))
        timed("first insert_new (MERGE into empty)", repeat, lambda i: fresh[i].insert_new(BRONZE_TEXTS, rows(i)))
        one = lakehouse("one")
        one.insert_new(BRONZE_TEXTS, rows(-1))
        merge = timed("insert_new into a table with rows", repeat, lambda i: one.insert_new(BRONZE_TEXTS, rows(i)))
        append = timed(
            "append of the same rows (no MERGE)", repeat, lambda i: one.append(BRONZE_TEXTS, rows(repeat + i))
        )
        timed("version (a listing of the log)", repeat, lambda i: one.version(BRONZE_TEXTS))
        timed("history(1) (a query of the log)", repeat, lambda i: one.delta(BRONZE_TEXTS).history(1).first())
        timed("count", repeat, lambda i: one.read(BRONZE_TEXTS).count())
        spark.stop()
    print(f"merge_over_append: {merge / append:.2f}")


if __name__ == "__main__":
    main()
