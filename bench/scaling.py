"""Scaling benchmark: the whole pipeline job (tiny random-weight models) on demo corpora of growing size.

For each size n the demo corpus is generated with ``demo.documents = n`` (and ``n / 5`` drawn images, so that the
images grow with the documents; the real photographs are a fixed set), then ``jobs.pipeline`` runs in its own
process on a fresh lake, as ``make run`` does. Read back from ``gold.runs``: seconds per stage, and the share of
each stage's wall time during which no Spark task was running (driver-side planning, Delta log and commit work,
job scheduling: Spark job overhead rather than work; sampled every 0.25 s by the pipeline's progress thread).

Prints one table per size, then time per document at each size and, last,
``time_per_doc_growth_<a>_to_<b>: <seconds per document at b / at a>`` for the two largest sizes: 1.0 is linear
scaling, below 1 is fixed cost being spread out. Full sizes are 1k, 10k and 100k documents; ``--quick`` runs 100
and 1k (its key figure is then ``time_per_doc_growth_100_to_1k``). Model outputs are meaningless (random weights);
only the time is measured.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from deltalake import DeltaTable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def short(n: int) -> str:
    """1000 -> 1k, 100000 -> 100k."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def run_size(n: int, work: Path, conf: Path, extra: Sequence[str] = (), tag: str = "") -> dict[str, object]:
    """Run the pipeline on an n-document corpus (``extra``: more ``--set`` items, ``tag``: a name for this run's
    lake, so that runs of one size share the corpus); wall time, the lake and the per-stage rows of gold.runs."""
    lake, raw = work / f"lake-{n}{tag}", work / f"raw-{n}"
    sets = [f"storage.root={lake}", f"demo.output={raw}", f"demo.documents={n}", f"demo.synthetic_images={n // 5}"]
    sets += extra
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", str(conf)]
    for item in sets:
        argv += ["--set", item]
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"pipeline failed on {n} documents:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    runs = DeltaTable(str(lake / "gold" / "runs")).to_pyarrow_table().to_pylist()
    latest = max(runs, key=lambda r: r["started_at"])["run_id"]  # a lake run before holds earlier runs' rows too
    ran = (r for r in runs if r["run_id"] == latest and r["status"] in ("ok", "skipped"))
    stages = sorted(ran, key=lambda r: int(r["stage_index"]))
    return {"n": n, "wall": wall, "lake": lake, "stages": stages}


def report(result: dict[str, object]) -> tuple[float, float]:
    """Print one size's table; (seconds in stages, seconds without a running task)."""
    n = int(str(result["n"]))
    stages = result["stages"]
    assert isinstance(stages, list)
    print(f"\n{n:,} documents: wall {float(str(result['wall'])):.1f} s (Spark start-up and demo corpus included)")
    print(f"{'stage':<30}{'seconds':>10}{'idle share':>12}  rows out")
    total = idle = 0.0
    for r in stages:
        busy = r["task_busy_share"]
        idle_share = 1.0 - float(busy) if busy is not None else 0.0
        total += float(r["seconds"])
        idle += float(r["seconds"]) * idle_share
        out = ", ".join(f"{k} {v:,}" for k, v in sorted(dict(r["rows_out"]).items())[:3])
        stage = r["stage"] + (" (skipped)" if r["status"] == "skipped" else "")
        print(f"{stage:<30}{float(r['seconds']):>10.1f}{idle_share:>12.2f}  {out}")
    print(f"{'all stages':<30}{total:>10.1f}{idle / total if total else 0.0:>12.2f}")
    return total, idle


def main() -> None:
    """Run every size, print the tables, the time per document and the growth figure last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 and 1k documents instead of 1k, 10k and 100k")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    args = parser.parse_args()
    sizes = args.sizes or ([100, 1_000] if args.quick else [1_000, 10_000, 100_000])
    per_doc = {}
    with tempfile.TemporaryDirectory(prefix="realsyn-scaling-") as tmp:
        for n in sizes:
            total, idle = report(run_size(n, Path(tmp), args.conf))
            per_doc[n] = total / n
            print(f"time per document at {n:,}: {per_doc[n] * 1000:.2f} ms; no task running {idle / total:.0%} of it")
    a, b = sizes[-2], sizes[-1]
    print("\ntime per document: " + ", ".join(f"{short(n)} {per_doc[n] * 1000:.2f} ms" for n in sizes))
    print(f"time_per_doc_growth_{short(a)}_to_{short(b)}: {per_doc[b] / per_doc[a]:.3f}")


if __name__ == "__main__":
    main()
