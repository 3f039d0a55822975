"""Fault injection over every stage: SIGKILL the pipeline job (driver, JVM and Python workers) at many moments.

One uninterrupted run on a fresh lake is the reference. A second lake is then built by a chain of runs: each run
is killed at the next planned moment (``--moments`` per stage: random instants inside the stage, drawn from the
reference's stage time, and kills at the 1st, 2nd, ... new file under the lake's tables after the stage began,
i.e. inside a Delta commit), and the next run resumes with ``--from`` the stage the kill landed in. A last run
finishes the pipeline, and every table of the two lakes is compared row by row (same keys, same values, no
duplicates, nothing missing; ``gold.runs`` and timestamp columns aside).

Prints one line per kill and, last, ``tables_differing_after_kills: <count>`` (0 is the pass). ``--quick``: one
moment per stage on 12 documents. The corpus is the demo corpus with tiny random-weight models.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deltalake import DeltaTable  # noqa: E402

from realsyn.pipeline import STAGE_NAMES  # noqa: E402
from tests.support.faults import Moment, differences, pipeline_argv, run_and_kill, run_to_end  # noqa: E402


def main() -> None:
    """Reference run, chain of killed and resumed runs, comparison; the count of differing tables last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one moment per stage")
    parser.add_argument("--moments", type=int, default=3, help="kills per stage (one in three inside a commit)")
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    args = parser.parse_args()
    per_stage = 1 if args.quick else args.moments
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    rng = random.Random(seed)
    sets = (
        "demo.kind=photos",
        f"demo.documents={args.documents}",
        f"demo.synthetic_images={max(4, args.documents // 3)}",
    )
    with tempfile.TemporaryDirectory(prefix="realsyn-faults-") as tmp:
        work = Path(tmp)
        raw, ref, lake, out = work / "raw", work / "reference", work / "lake", work / "console.txt"
        t0 = time.perf_counter()
        if run_to_end(pipeline_argv(args.conf, ref, raw, sets), out, timeout_s=3600) != 0:
            raise SystemExit(f"the reference run failed:\n{out.read_text()[-4000:]}")
        print(f"reference run: {time.perf_counter() - t0:.0f} s (seed {seed})", flush=True)
        runs = DeltaTable(str(ref / "gold" / "runs")).to_pyarrow_table().to_pylist()
        seconds = {r["stage"]: float(r["seconds"]) for r in runs if r["status"] == "ok"}
        moments = []
        for stage in (s for s in STAGE_NAMES if s in seconds):
            for k in range(per_stage):
                if k % 3 == 2 or (args.quick and rng.random() < 0.3):
                    moments.append(Moment(stage, "commit", nth=rng.randint(1, 3)))
                else:
                    moments.append(Moment(stage, "delay", delay_s=rng.uniform(0.05, 0.95) * seconds[stage]))
        resume: str | None = None
        landed = []
        for moment in moments:
            if resume is not None and STAGE_NAMES.index(moment.stage) < STAGE_NAMES.index(resume):
                continue  # an earlier kill landed past this stage
            extra = ("--from", resume) if resume else ()
            stage = run_and_kill(pipeline_argv(args.conf, lake, raw, sets, *extra), lake, moment, out, 3600)
            print(f"kill planned {moment}: landed in {stage or 'nothing (the run had finished)'}", flush=True)
            landed.append(stage)
            if stage is None:
                break
            resume = stage
        if not landed or landed[-1] is not None:
            extra = ("--from", resume) if resume else ()
            if run_to_end(pipeline_argv(args.conf, lake, raw, sets, *extra), out, timeout_s=3600) != 0:
                raise SystemExit(f"the resumed run failed:\n{out.read_text()[-4000:]}")
        diff = differences(ref, lake)
        kills = sum(s is not None for s in landed)
        stages_hit = sorted({s for s in landed if s is not None}, key=STAGE_NAMES.index)
        print(f"{kills} kills in {len(stages_hit)} stages ({', '.join(stages_hit)}); {time.perf_counter() - t0:.0f} s")
        for line in diff:
            print(f"  differs: {line}")
        print(f"tables_differing_after_kills: {len(diff)}")


if __name__ == "__main__":
    main()
