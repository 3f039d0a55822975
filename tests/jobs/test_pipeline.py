"""`make run`'s job, run as users run it (its own process and Spark application), on a small demo corpus.

One uninterrupted run is the reference; a copy of it as it was when a random stage started is taken on by a run of
that stage that is SIGKILLed at a random moment inside it (or inside one of its Delta commits) and resumed with
``--from``, and must end with the tables the reference had after the stage. While a run holds the lake, a second
pipeline on it refuses to start.

The same job submitted by ``./spark-submit.sh`` to a standalone cluster (a master and two workers of one core, on
loopback, from pyspark's own distribution) ends with the reference's tables too. Its executors are separate JVMs with
their own Python workers and working directories (under each worker's work dir), so nothing the driver holds in
memory, in its working directory or on its ``sys.path`` reaches them except through Spark: the code goes as the
wheel zip (``--py-files``), the model registry with ``--files``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from deltalake import DeltaTable

from realsyn.contracts import TABLES
from realsyn.notebook import execute_notebook
from realsyn.pipeline import STAGE_NAMES
from tests.support.faults import (
    Moment,
    clean_env,
    differences,
    lake_before,
    pipeline_argv,
    run_and_kill,
    run_to_end,
)
from tests.support.standalone import SPARK_CONF, Cluster, assert_same_rows, standalone_cluster, tables

# Whole pipeline runs on 2 shared cores: well past the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(3600)

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf" / "local.yaml"
SMALL = ("demo.documents=12",)  # conf/local.yaml's generated corpus, as `make run` ingests it
# The stages run on the standalone cluster. In `make test`: documents to embeddings, the stages whose executors read
# input files, fetch, run pandas UDFs and load models from the shipped registry. The long form,
# REALSYN_STANDALONE_UNTIL=cluster_images, adds semantic dedup, k-means, retrieval and image clusters (trees shipped
# to executors with addFile); docs/cluster.md has its figures.
UNTIL = os.environ.get("REALSYN_STANDALONE_UNTIL", "embed")


def unwrapped(console: str) -> str:
    """``console`` with the pipeline's wrapped summary lines joined again (a continuation is indented 8)."""
    return re.sub(r"\n {8}(?=\S)", " ", console)


def table(root: Path, name: str) -> list[dict[str, object]]:
    layer, _, rest = name.partition(".")
    return DeltaTable(str(root / layer / rest)).to_pyarrow_table().to_pylist()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo corpus folder for every run of the module (its paths are part of the tables)."""
    return tmp_path_factory.mktemp("raw") / "demo"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> tuple[Path, str]:
    """The lake of one uninterrupted run, and what the run printed."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    argv = pipeline_argv(CONF, lake, raw, SMALL)
    # No virtualenv on PATH and no PYSPARK_PYTHON: Spark's Python workers must still find the project's packages.
    result = subprocess.run(argv, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=3000, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return lake, result.stdout + result.stderr


def test_the_pipeline_on_a_small_corpus(reference: tuple[Path, str], raw: Path) -> None:
    lake, console = reference
    layouts = sorted(str(r["layout"]) for r in table(lake, "bronze.documents"))
    assert layouts == ["mmc4"] * 6 + ["obelics"] * 6
    refs = table(lake, "bronze.image_refs")
    # Every image reference points at a file the generator wrote, and every distinct URL was fetched from it.
    assert all(Path(str(r["url"]).removeprefix("file://")).is_file() for r in refs)
    fetched = table(lake, "bronze.fetched_images")
    assert sorted(str(r["url_id"]) for r in fetched) == sorted({str(r["url_id"]) for r in refs})
    # The generator's broken files are the fetched files that are no image; every other one is fetched as it is.
    planted = json.loads((raw / "manifest.json").read_text(encoding="utf-8"))["counts"]
    assert sum(r["status"] != "ok" for r in fetched) == planted.get("images.broken", 0)
    assert {r["status"] for r in fetched} <= {"ok", "decode_error", "not_an_image"}
    funnel = {(r["stage"], r["step"]): (r["rows_in"], r["rows_out"]) for r in table(lake, "gold.funnel")}
    assert funnel[("ingest", "documents")] == (12, 12)
    # The image funnel drops what the generator planted: every too-small or elongated image at quality, re-uploads
    # at exact dedup, near copies (re-encoded, resized, cropped) at perceptual dedup.
    fetched_ok = sum(r["status"] == "ok" for r in fetched)
    assert funnel[("extract_images", "quality")] == (
        fetched_ok,
        fetched_ok - planted.get("images.too_small", 0) - planted.get("images.aspect_ratio", 0),
    )
    exact_in, exact_out = funnel[("extract_images", "exact_dedup")]
    near_in, near_out = funnel[("extract_images", "perceptual_dedup")]
    assert exact_in - exact_out == planted.get("images.exact_duplicate", 0)
    assert near_in - near_out == planted.get("images.near_duplicate", 0)
    # The demo's random-weight model never drives semantic dedup: the stage says so and writes nothing.
    images = {r["image_id"] for r in table(lake, "silver.images")}
    sentences = {r["sentence_id"] for r in table(lake, "silver.sentences")}
    assert not any(stage == "semantic_dedup" for stage, _ in funnel)
    assert funnel[("extract_sentences", "near_dedup")][1] == len(sentences)
    assert re.search(r"semantic dedup: images: not run \(model 'tiny-random' has random weights", unwrapped(console))
    # Each stage's output feeds the next: kept images and sentences are embedded, and images get retrieved texts.
    assert images and sentences
    assert images <= {r["image_id"] for r in table(lake, "silver.image_embeddings")}
    assert sentences <= {r["sentence_id"] for r in table(lake, "silver.sentence_embeddings")}
    retrieval = table(lake, "silver.retrieval")
    assert {r["image_id"] for r in retrieval} == images
    assert {r["sentence_id"] for r in retrieval} <= sentences
    assert {r["image_id"] for r in table(lake, "silver.image_clusters")} == images
    # Every image with retrieved texts ends with exactly one synthetic text or one reject with a reason.
    kept = [r["image_id"] for r in table(lake, "gold.synthetic_texts")]
    rejected = [r["image_id"] for r in table(lake, "gold.synthetic_text_rejects")]
    assert sorted(kept + rejected) == sorted({r["image_id"] for r in retrieval})
    assert all(r["reason"] for r in table(lake, "gold.synthetic_text_rejects"))
    # Every table the pipeline wrote is its contract: the declared columns, types and nullability, in order,
    # unique on its key; every reject table has a reason column so named, and a detail.
    written = {f"{p.parent.parent.name}.{p.parent.name}" for p in lake.glob("*/*/_delta_log")}
    assert written == set(TABLES)
    for name, contract in TABLES.items():
        delta = DeltaTable(str(lake / name.replace(".", "/")))
        fields = json.loads(delta.schema().to_json())["fields"]
        declared = json.loads(contract.schema.json())["fields"]
        if contract.open_columns is not None:  # the scale columns, placed after the declared column
            at = [f["name"] for f in fields].index(contract.open_columns.after) + 1
            scales = [f for f in fields if f["name"].startswith(contract.open_columns.prefix)]
            assert scales and all(f["type"] == "boolean" for f in scales)
            declared[at:at] = scales
        assert fields == declared, name
        rows = delta.to_pyarrow_table(columns=list(contract.keys)).to_pylist()
        assert len({tuple(r.values()) for r in rows}) == len(rows), name
        if name.endswith("_rejects"):
            assert {"reason", "detail"} <= {f["name"] for f in fields}, name
    assert {r["image_id"] for r in table(lake, "gold.captions")} == images
    # The dataset: every image of silver.images is in gold.dataset or in its rejects, and the kept pairs are the
    # synthetic texts kept; the exports and the report page are where the summary says.
    dataset = table(lake, "gold.dataset")
    assert {r["image_id"] for r in dataset} == set(kept)
    dataset_rejects = {r["image_id"] for r in table(lake, "gold.dataset_rejects")}
    assert dataset_rejects | set(kept) == images and not dataset_rejects & set(kept)
    for scale in ("all", "cap3", "n30"):
        assert (lake / "exports" / scale / "webdataset" / "sizes.json").is_file(), scale
        assert any((lake / "exports" / scale / "parquet").glob("*.parquet")), scale
    assert (lake / "report" / "index.html").is_file()
    # The dataset notebook runs on the demo's tables (as `make run` runs it after the pipeline).
    executed = nbformat.read(execute_notebook(lake, lake / "report" / "dataset.ipynb"), as_version=4)
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(f"{len(dataset)} rows in gold.dataset" in o.get("text", "") for o in outputs)
    # Each stage's summary once, under its line, wrapped to 120 columns (a continuation indented 8); then the tables
    # by layer and where to look.
    summaries = unwrapped(console)
    assert len(re.findall(r"^ {6}export to .*: all: [0-9,]+ rows", summaries, re.M)) == 1
    assert len(re.findall(r"^ {6}report: ", summaries, re.M)) == 1
    end = console[console.index("rows per table:") :].splitlines()
    assert all(len(line) <= 120 for line in console.splitlines()), [x for x in console.splitlines() if len(x) > 120]
    assert re.match(r"  bronze  documents 12, ", end[1]) and re.search(r"^report page: +\S+index.html$", console, re.M)

    # One row per stage in gold.runs, with the row counts measured before and after it.
    runs = {r["stage"]: r for r in table(lake, "gold.runs")}
    assert len({r["run_id"] for r in runs.values()}) == 1
    assert set(runs) == set(STAGE_NAMES)
    assert {name: r["status"] for name, r in runs.items()} == dict.fromkeys(STAGE_NAMES, "ok")
    assert dict(runs["ingest"]["rows_out"])["bronze.documents"] == 12
    assert dict(runs["fetch"]["rows_in"])["bronze.image_refs"] == len(refs)
    assert dict(runs["semantic_dedup"]["rows_out"])["silver.images"] == len(images)
    assert re.fullmatch(r"[0-9a-f]{16}", str(runs["ingest"]["config_hash"]))
    assert str(runs["ingest"]["code_version"]).startswith("0.1.0")

    # The console: one line per stage and the stage summaries; Spark's and Ivy's output went to the run log.
    for i, name in enumerate(STAGE_NAMES, start=1):
        assert re.search(rf"^\[{i}/{len(STAGE_NAMES)}\] {name} +(ok|skipped)", console, re.M), name
    for noise in ("WARN", "::", "Ivy", "[Stage", "Traceback"):
        assert noise not in console
    # Leaves probed per image are measured: never more than the tree has (the configured average is 44).
    probed = re.search(r"([0-9.]+) of ([0-9,]+) lea(?:ves|f) probed per image on average", summaries)
    assert probed is not None and 1 <= float(probed[1]) <= int(probed[2].replace(",", ""))
    log = next((lake / "_logs").glob("*.log")).read_text(encoding="utf-8")
    assert "resolution report" in log and "stage retrieve done" in log


def versions(lake: Path) -> dict[str, int]:
    """Every Delta table under ``lake`` (the exports' too), by its folder, and its version."""
    return {str(p.parent.relative_to(lake)): DeltaTable(str(p.parent)).version() for p in lake.rglob("_delta_log")}


def test_a_rerun_with_nothing_new_writes_no_table(reference: tuple[Path, str], raw: Path, tmp_path: Path) -> None:
    ref_lake, _ = reference
    lake = tmp_path / "lake"  # a copy: where the tables live is not part of what a stage computes
    shutil.copytree(ref_lake, lake)
    before = versions(lake)
    argv = pipeline_argv(CONF, lake, raw, SMALL)
    done = subprocess.run(argv, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # Every table but the runs log is at the version it was: ingest found nothing new, the stages between it and
    # the exports were skipped, and the funnel was not rewritten.
    after = versions(lake)
    assert after.pop("gold/runs") > before.pop("gold/runs")
    assert after == before and "exports/all/delta" in after
    assert re.search(r"^ {6}export to .*: all: [0-9,]+ rows as .* unchanged", unwrapped(done.stdout), re.M)
    runs = [r for r in table(lake, "gold.runs") if r["run_id"] != table(ref_lake, "gold.runs")[0]["run_id"]]
    status = {r["stage"]: r["status"] for r in runs}
    always = {"ingest", "export", "report"}  # they read or write files, not only tables
    assert status == {name: "ok" if name in always else "skipped" for name in STAGE_NAMES}
    for name in set(STAGE_NAMES) - always:
        assert re.search(rf"^\[[0-9]+/[0-9]+\] {name} +skipped: nothing it reads or writes changed", done.stdout, re.M)
    # A skipped stage keeps the row counts of the run that wrote its tables.
    first = {r["stage"]: r for r in table(ref_lake, "gold.runs")}
    assert all(dict(r["rows_out"]) == dict(first[r["stage"]]["rows_out"]) for r in runs if r["status"] == "skipped")


@pytest.mark.slow
def test_a_killed_run_resumed_with_from_ends_with_the_same_tables(
    reference: tuple[Path, str], raw: Path, tmp_path: Path
) -> None:
    """One SIGKILL, at a random moment of a random stage or inside one of its Delta commits; the run resumed with
    ``--from`` the stage it was killed in ends with the tables the reference run had when it finished that stage.
    Both runs are that one stage (``--from`` and ``--until`` it), on the reference lake as it was when the reference
    run started it: the stages after it read the same tables as the reference's did. bench/fault_injection.py is
    the long form (runs from scratch to the end, several kills in every stage, each resumed run killed again)."""
    ref_lake, _ = reference
    seconds = {r["stage"]: float(r["seconds"]) for r in table(ref_lake, "gold.runs") if r["status"] == "ok"}
    seed = int(os.environ.get("REALSYN_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    stage = rng.choice([s for s in STAGE_NAMES if s in seconds])
    if rng.random() < 0.5:
        moment = Moment(stage, "delay", delay_s=rng.uniform(0.1, 0.9) * seconds[stage])
    else:
        moment = Moment(stage, "commit", nth=rng.randint(1, 3))
    context = f"seed {seed}, moment {moment}"
    lake, out = tmp_path / "lake", tmp_path / "console.txt"

    def second_pipeline_refuses() -> None:
        done = subprocess.run(
            pipeline_argv(CONF, lake, raw, SMALL),
            cwd=REPO,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 3, context + done.stderr[-2000:]
        assert "another realsyn pipeline is running on these tables" in done.stderr

    lake_before(ref_lake, stage, lake)
    argv = pipeline_argv(CONF, lake, raw, SMALL, "--from", stage, "--until", stage)
    resume_from = run_and_kill(argv, lake, moment, out, while_running=second_pipeline_refuses)
    context += f", killed in {resume_from}"
    if resume_from is not None:  # else it finished before the moment came
        assert run_to_end(argv, out) == 0, context + out.read_text()[-4000:]
    after = STAGE_NAMES.index(stage) + 1
    expected = ref_lake
    if after < len(STAGE_NAMES):
        expected = tmp_path / "expected"
        lake_before(ref_lake, STAGE_NAMES[after], expected)
    assert differences(expected, lake) == [], context

    # gold.runs holds the reference run's stages before this one, and the stage alone for the last run (the resumed
    # one, or the killed one where it finished before the moment); a run killed in its stage wrote no row for it.
    runs = table(lake, "gold.runs")
    by_run: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: (str(r["run_id"]), int(str(r["stage_index"])))):
        by_run.setdefault(str(r["run_id"]), []).append(str(r["stage"]))
    assert by_run[max(by_run)] == [stage], context
    assert all(r["status"] in {"ok", "skipped"} for r in runs), context


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A master and two workers of one core and 1.5 GB each, stopped by their pids when the module ends."""
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="1536m") as c:
        yield c


def test_the_job_submitted_to_a_standalone_cluster_ends_with_the_reference_tables(
    reference: tuple[Path, str], raw: Path, cluster: Cluster, tmp_path: Path
) -> None:
    ref_lake, _ = reference
    cwd = tmp_path / "remote"  # a relative storage.root, under the submitting shell's folder
    cwd.mkdir()
    argv = [str(REPO / "spark-submit.sh"), "pipeline", "--conf", str(CONF)]
    for item in ("storage.root=lake", f"demo.output={raw}", *SMALL):
        argv += ["--set", item]
    argv += ["--until", UNTIL, "--", "--master", cluster.master_url]
    for key, value in SPARK_CONF.items():
        argv += ["--conf", f"{key}={value}"]
    # Neither the driver's nor the workers' environment points Python at the checkout.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYSPARK_PYTHON", "VIRTUAL_ENV"}}
    env.update(PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\n{cluster.log_tail()}"

    # The job ran on both workers, in executors of their own (a work dir per application and executor).
    for work in cluster.work_dirs:
        executors = [d for d in work.glob("app-*/*") if d.is_dir()]
        assert len(executors) == 1, executors
        assert "Finished task" in (executors[0] / "stderr").read_text(errors="replace")

    # The reference's lake as it was when its run had finished the same stages.
    after = STAGE_NAMES.index(UNTIL) + 1
    local = ref_lake if after == len(STAGE_NAMES) else tmp_path / "local"
    if after < len(STAGE_NAMES):
        lake_before(ref_lake, STAGE_NAMES[after], local)
    want, got = tables(local), tables(cwd / "lake")
    assert sorted(got) == sorted(want)
    assert {"bronze/documents", "silver/image_embeddings", "silver/sentence_embeddings", "gold/funnel"} <= set(want)
    assert UNTIL != "cluster_images" or {"silver/retrieval", "silver/image_clusters"} <= set(want)
    for name in want:
        # Reject tables may be empty on the demo corpus; every other table has rows to compare.
        assert want[name] or name.endswith("rejects"), f"{name} is empty"
        if name == "gold/runs":
            # The storage roots differ (relative and absolute), hence the config hashes; the reference runs from the
            # checkout, whose code version names its commit, the cluster run from the wheel, whose version does not.
            for row in (*want[name], *got[name]):
                del row["config_hash"], row["code_version"]
        assert_same_rows(name, got[name], want[name])
