"""Delta's log-state partitions on a small local lake: the whole pipeline job with Delta's default
``spark.databricks.delta.snapshotPartitions`` (50) and with conf/local.yaml's (2), side by side on one corpus.

Every read and commit of a Delta table rebuilds or filters the table's log state in that many Spark tasks. On two
cores and tables of a few files, 50 tasks of nearly nothing each cost more than the work, and the demo pipeline
runs ~1,100 Spark jobs. Both runs use one demo corpus (``jobs.pipeline`` in its own process, a fresh lake each,
as ``bench/scaling.py`` runs it); their tables are compared row by row (``tests.support.faults.differences``), so the
setting is shown to change the time and nothing else.

Prints each run's stages (seconds from ``gold.runs``, share of the stage with no Spark task running), the tables
that differ (none expected) and, last, ``snapshot_partitions_speedup: <stage seconds at 50 / at 2>``. ``--quick``
runs 12 documents (the size of tests/jobs/test_pipeline.py) instead of the demo's 300. Model outputs are
meaningless (random weights); only the time is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scaling import report, run_size  # noqa: E402
from tests.support.faults import differences  # noqa: E402

KEY = "spark.conf.spark.databricks.delta.snapshotPartitions"


def main() -> None:
    """Run the pipeline once per setting, compare the lakes, print the speedup last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="12 documents instead of 300")
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    args = parser.parse_args()
    n = 12 if args.quick else args.documents
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="realsyn-delta-log-") as tmp:
        lakes = {}
        for partitions in (50, 2):
            print(f"\nsnapshotPartitions {partitions}:")
            result = run_size(
                n, Path(tmp), args.conf, [f'{KEY}="{partitions}"'], tag=f"-p{partitions}", corpus="photos"
            )
            seconds[partitions], _ = report(result)
            lakes[partitions] = Path(str(result["lake"]))
        differing = differences(lakes[50], lakes[2])
    print(f"\ntables differing between the two runs: {len(differing)}")
    for line in differing:
        print(f"  {line}")
    print(f"stage seconds: {seconds[50]:.1f} at 50 partitions, {seconds[2]:.1f} at 2")
    print(f"snapshot_partitions_speedup: {seconds[50] / seconds[2]:.2f}")


if __name__ == "__main__":
    main()
