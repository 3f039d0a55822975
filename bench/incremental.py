"""An incremental run against a full run: the whole pipeline job on the demo corpus, then the same job after 10 new
documents landed beside it, then once more with nothing new.

The full run and both reruns are ``jobs.pipeline`` in its own process on one lake (``bench/scaling.py``'s
``run_size``). The 10 new documents are MMC4 documents of a second demo corpus (another seed: other drawn images,
other page layouts) written as one more file in the corpus's ``mmc4/`` folder, with their own document URLs and
their images copied under the corpus folder, so the rerun ingests, fetches and embeds only them. The demo's texts
come from a fixed pool, so most of their sentences are already in the lake: what the increment adds is documents,
images and image-sentence pairs, not new sentence clusters.

Prints each run's stages (seconds from ``gold.runs``, rows out), the tables each rerun wrote a new Delta version of,
and, last, ``incremental_over_full: <stage seconds of the 10-document rerun / of the full run>``. ``--quick`` runs
60 documents instead of the demo's 300. Model outputs are meaningless (random weights); only the time is measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deltalake import DeltaTable  # noqa: E402

from bench.scaling import report, run_size  # noqa: E402
from realsyn.config_sections import DemoCorpusConfig  # noqa: E402
from realsyn.demo_corpus import generate  # noqa: E402

NEW_DOCUMENTS = 10


def add_documents(raw: Path, work: Path, n: int) -> None:
    """Write ``n`` MMC4 documents of a second demo corpus into ``raw/mmc4/increment.jsonl``, their images copied
    to ``raw/increment-images/`` (under the fetch's file root) and their document URLs made new."""
    extra = generate(
        DemoCorpusConfig(kind="photos", output=str(work / "extra"), documents=2 * n, synthetic_images=n, seed=7)
    )
    images = raw / "increment-images"
    shutil.copytree(extra / "images", images)
    old, new = (extra / "images").resolve().as_uri(), images.resolve().as_uri()
    (shard,) = (extra / "mmc4").glob("*.jsonl")
    lines = []
    for i, line in enumerate(shard.read_text(encoding="utf-8").splitlines()[:n]):
        doc = json.loads(line)
        doc["url"] = f"https://demo.realsyn.invalid/increment/{i}"
        for info in doc["image_info"]:
            info["raw_url"] = info["raw_url"].replace(old, new)
        lines.append(json.dumps(doc, ensure_ascii=False))
    (raw / "mmc4" / "increment.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def versions(lake: Path) -> dict[str, int]:
    """Every Delta table under ``lake`` (by its path below the lake) and its current version."""
    found = {}
    for log in sorted(lake.rglob("_delta_log")):
        table = log.parent
        found[str(table.relative_to(lake))] = DeltaTable(str(table)).version()
    return found


def main() -> None:
    """Full run, rerun with 10 new documents, rerun with nothing new; the ratio of the increment last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="60 documents instead of 300")
    parser.add_argument("--documents", type=int, default=300)
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "local.yaml")
    args = parser.parse_args()
    n = 60 if args.quick else args.documents
    with tempfile.TemporaryDirectory(prefix="realsyn-incremental-") as tmp:
        work = Path(tmp)
        print(f"full run, {n} documents:")
        full, _ = report(run_size(n, work, args.conf, corpus="photos"))
        lake = work / f"lake-{n}"
        before = versions(lake)

        add_documents(work / f"raw-photos-{n}", work, NEW_DOCUMENTS)
        print(f"\nrerun with {NEW_DOCUMENTS} new documents:")
        increment, _ = report(run_size(n, work, args.conf, corpus="photos"))
        after = versions(lake)
        written = sorted(t for t, v in after.items() if before.get(t) != v and t != "gold/runs")
        print(f"tables with a new version: {len(written)} ({', '.join(written)})")

        print("\nrerun with nothing new:")
        nothing, _ = report(run_size(n, work, args.conf, corpus="photos"))
        final = versions(lake)
        rewritten = sorted(t for t, v in final.items() if after.get(t) != v and t != "gold/runs")
        print(f"tables with a new version: {len(rewritten)}{' (' + ', '.join(rewritten) + ')' if rewritten else ''}")

    print(f"\nstage seconds: full {full:.1f}, {NEW_DOCUMENTS} new documents {increment:.1f}, nothing new {nothing:.1f}")
    print(f"nothing_new_over_full: {nothing / full:.3f}")
    print(f"incremental_over_full: {increment / full:.3f}")


if __name__ == "__main__":
    main()
