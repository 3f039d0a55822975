"""scripts/cost_model.py: its arithmetic on a small hand-made scaling JSON, worked out by hand (no Spark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]
cm = load_script("cost_model", REPO / "scripts" / "cost_model.py")

PAPER = cm.PaperScale()
TREE = cm.TreeShape(
    sentence_leaf_size=420,
    image_leaf_size=200,
    max_points_per_centroid=256,
    niter=20,
    boundary_passes=2,
    assign_coarse_probe=8,
    probe_leaves=44,
    coarse_probe=16,
)
GEN = cm.generation_shape("x" * 400, "Retrieved text: {retrieved_text}", 128, 30, 5, PAPER)


def stage(name: str, seconds: float, rows_in: dict[str, int], rows_out: dict[str, int], **extra: Any) -> dict:
    return {"stage": name, "seconds": seconds, "rows_in": rows_in, "rows_out": rows_out, **extra}


def scaling_json() -> dict[str, Any]:
    """Two sizes on 2 cores: ingest speeds up 5x between them (start-up dominated), retrieve 1.2x (not)."""
    small = {
        "documents": 100,
        "cores": 2,
        "measured": [
            stage("ingest", 10.0, {}, {"bronze.documents": 100}, task_busy_share=0.9),
            stage("retrieve", 10.0, {"silver.images": 100}, {"silver.retrieval": 300}, task_busy_share=0.8),
        ],
        "funnel": {},
    }
    large = {
        "documents": 1000,
        "cores": 2,
        "master": "local[2]",
        "wall_s": 300.0,
        "code_version": "test",
        "load_average": {"before": [1.0, 1.0, 1.0], "after": [2.0, 2.0, 2.0]},
        "measured": [
            stage(
                "ingest",
                20.0,
                {},
                {"bronze.documents": 1000},
                task_busy_share=0.9,
                peak_rss_bytes={"driver": 2 * 2**30, "python_worker_largest": 300 * 2**20},
            ),
            stage(
                "extract_sentences",
                50.0,
                {"bronze.texts": 4000},
                {"silver.sentences": 800},
                task_busy_share=0.9,
            ),
            stage(
                "embed",
                40.0,
                {"silver.images": 1200, "silver.sentences": 800},
                {"silver.image_embeddings": 1000},
                task_busy_share=0.9,
            ),
            stage(
                "retrieve",
                100.0,
                {"silver.images": 1200},
                {"silver.retrieval": 3600},
                task_busy_share=0.8,
                spark={"shuffle_write_bytes": 1.2e6},
            ),
        ],
        "funnel": {
            "extract_sentences": [
                {"step_index": 1, "step": "emoji", "rows_in": 10000, "rows_out": 9000},
                {"step_index": 0, "step": "empty", "rows_in": 10000, "rows_out": 10000},
            ]
        },
        "tables": {
            "silver.images": {"rows": 1200, "live_bytes": 120_000, "vector_dims": {}},
            "silver.image_embeddings": {"rows": 1000, "live_bytes": 50_000, "vector_dims": {"vector": 8}},
            "silver.retrieval": {"rows": 3600, "live_bytes": 72_000, "vector_dims": {}},
            "gold.dataset": {"rows": 600, "live_bytes": 60_000, "vector_dims": {}},
        },
        "exports": {"all/parquet": {"rows": 500, "bytes": 25_000, "files": 2}},
    }
    return {"schema": "realsyn-scaling/2", "corpus": "demo", "conf": "conf/local.yaml", "sizes": [small, large]}


@pytest.fixture
def costs() -> dict[str, Any]:
    return {c.stage: c for c in cm.stage_costs(scaling_json(), PAPER, cm.default_gpu_rates(), GEN, TREE)}


def test_core_hours_are_paper_rows_over_the_measured_rate_per_core(costs: dict[str, Any]) -> None:
    ingest = costs["ingest"]
    assert ingest.rate_per_core == pytest.approx(1000 / 20 / 2)  # 25 documents/s per core
    assert ingest.core_hours == pytest.approx(118e6 / 25 / 3600)  # 1,311.1
    retrieve = costs["retrieve"]
    assert retrieve.rate_per_core == pytest.approx(1200 / 100 / 2)  # 6 images/s per core
    assert retrieve.core_hours == pytest.approx(198e6 / 6 / 3600)  # 9,166.7


def test_sentence_occurrences_come_from_the_first_funnel_step(costs: dict[str, Any]) -> None:
    sentences = costs["extract_sentences"]
    assert sentences.measured_rows == 10_000
    assert sentences.core_hours == pytest.approx(2.13e9 / (10_000 / 50 / 2) / 3600)


def test_a_rate_that_jumps_between_sizes_is_flagged_start_up_dominated(costs: dict[str, Any]) -> None:
    assert costs["ingest"].rate_growth == pytest.approx(25 / 5)
    assert costs["ingest"].startup_dominated
    assert costs["retrieve"].rate_growth == pytest.approx(6 / 5)
    assert not costs["retrieve"].startup_dominated


def test_shuffle_is_measured_bytes_per_driving_row_times_paper_rows(costs: dict[str, Any]) -> None:
    assert costs["retrieve"].shuffle_bytes_measured == pytest.approx(1.2e6 / 1200 * 198e6)
    # row-size estimate: silver.retrieval, 20 bytes per row, 3 rows per image at the paper's scale
    assert costs["retrieve"].shuffle_bytes_rowsize == pytest.approx(20 * 198e6 * 3)
    assert costs["ingest"].shuffle_bytes_measured is None


def test_gpu_hours_of_embed_and_generate() -> None:
    rates = cm.gpu_rates([cm.GpuMeasurement("H100", "2026-12-06", "test", {"embed_images_per_s": 1000.0})])
    figure = rates["H100"]["embed_images_per_s"]
    assert (figure.value, figure.basis) == (1000.0, "measured")
    embed = cm.gpu_hours("embed", PAPER, rates["H100"], GEN, TREE)
    assert embed["images"] == pytest.approx(285e6 / 1000 / 3600)
    generate = cm.gpu_hours("generate", PAPER, rates["H100"], GEN, TREE)
    assert generate["llm"] == pytest.approx(198e6 * 40 / 5777 / 3600)  # 380.8 H100-hours
    assert generate["llm at max_new_tokens"] == pytest.approx(198e6 * 128 / 5777 / 3600)


def test_generation_shape_counts_prompt_tokens() -> None:
    # (400 + len("Retrieved text: ")) / 4 = 104, + 15 template + 40 retrieved + 15 caption + 5 tags x 3
    assert GEN.prompt_tokens == pytest.approx(104 + 15 + 40 + 15 + 15)
    assert (GEN.output_tokens, GEN.output_tokens_max) == (40, 128)


def test_retrieval_flops_follow_the_tree() -> None:
    # 42,000 sentences -> 100 leaves, 10 coarse of 10: 10 + 16 x 10 + 44 x 420 = 18,650 dot products per image
    tree_flops, brute = cm.retrieval_flops(10, 42_000, TREE, 768)
    assert tree_flops == pytest.approx(10 * 18_650 * 768 * 2)
    assert brute == pytest.approx(10 * 42_000 * 768 * 2)


def test_kmeans_flops_of_a_small_tree() -> None:
    # 40,000 rows, leaf 100 -> 400 leaves, 20 coarse of 20 leaves; sample min(2,000, 256 x 20) = 2,000 rows
    tree = cm.TreeShape(100, 100, 256, 20, 2, 8, 44, 16)
    coarse = 20 * min(40_000, 256 * 20) * 20 * 4 * 2
    train = 20 * 20 * 2_000 * 20 * 4 * 2
    assign = 40_000 * (20 + 8 * 20) * 4 * 2
    assert cm.kmeans_flops(40_000, 100, tree, 4) == pytest.approx(coarse + 3 * train + assign)


def test_table_sizes_widen_vectors_and_scale_rows() -> None:
    tables = scaling_json()["sizes"][1]["tables"]
    assert cm.table_bytes_per_row(tables["silver.images"], 768) == pytest.approx(100)
    assert cm.table_bytes_per_row(tables["silver.image_embeddings"], 768) == pytest.approx(50 + 760 * 4)
    scores = {"rows": 10, "live_bytes": 1_000, "vector_dims": {"cosines": 5}}  # a list of scores, not a vector
    assert cm.table_bytes_per_row(scores, 768) == pytest.approx(100)
    assert cm.paper_rows("silver.images", tables, PAPER) == pytest.approx(198e6)
    assert cm.paper_rows("gold.dataset", tables, PAPER) == pytest.approx(600 / 1200 * 198e6)
    assert cm.paper_rows("gold.funnel", tables, PAPER) is None


def test_bill_prices_core_hours_as_vcpu_hours_and_gpu_hours_as_gpu_shares(costs: dict[str, Any]) -> None:
    b = cm.bill(list(costs.values()), cm.INSTANCES["m7i.2xlarge"], cm.INSTANCES["p5.48xlarge"])
    cpu_hours = costs["ingest"].core_hours + costs["extract_sentences"].core_hours + costs["retrieve"].core_hours
    assert b.core_hours == pytest.approx(cpu_hours)  # embed is a GPU stage: its CPU rate is not billed
    assert b.cpu_usd == pytest.approx(cpu_hours * 0.4032 / 8)
    assert b.gpu_hours == pytest.approx(cm.billed_gpu_hours(costs["embed"]))
    assert b.gpu_usd == pytest.approx(b.gpu_hours * 98.32 / 8)
    assert b.total_usd == pytest.approx(b.cpu_usd + b.gpu_usd)


def test_the_page_shows_the_figures_and_the_start_up_warning() -> None:
    doc = scaling_json()
    doc["host"] = {"logical_cpus": 2, "cpu_model": "test cpu", "memory_bytes": 2**34, "platform": "test"}
    page = cm.render(doc, "test.json", PAPER, cm.default_gpu_rates(), GEN, TREE, [], "python scripts/cost_model.py")
    assert "**Start-up dominated.**" in page and "ingest" in page
    assert "| ingest | documents: 118,000,000 (documents) | 25.0 (start-up dominated) | 1,311 |" in page
    assert "**1,000 documents**" in page
    assert "verify current pricing" in page
    assert "on the photos demo corpus (texts from a fixed pool" in page  # an older file's "demo" is that corpus
    doc["corpus"] = "generated"
    page = cm.render(doc, "test.json", PAPER, cm.default_gpu_rates(), GEN, TREE, [], "python scripts/cost_model.py")
    assert "on the generated corpus (realsyn.corpus_generator" in page and "fixed pool" not in page
    assert "--set" not in page
    doc["overrides"] = ["generate.max_new_tokens=8"]  # bench/scaling.py --set: the page names what it changed
    page = cm.render(doc, "test.json", PAPER, cm.default_gpu_rates(), GEN, TREE, [], "python scripts/cost_model.py")
    assert "`--set generate.max_new_tokens=8` (tiny random-weight models)" in " ".join(page.split())


def test_a_gpu_file_with_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"device": "H100", "date": "2026-12-06", "images_per_hour": 1}), encoding="utf-8")
    with pytest.raises(SystemExit, match="images_per_hour"):
        cm.GpuMeasurement.load(path)


def test_sizes_of_several_runs_are_read_together_and_the_note_names_each_run() -> None:
    doc = scaling_json()
    small, large = doc["sizes"]
    rerun = {**small, "run_id": "r2", "code_version": "v2", "measured": small["measured"][:1]}
    first = {**doc, "sizes": [small, {**large, "run_id": "r1", "code_version": "v1"}]}
    merged = cm.merged_sizes([("a.json", first), ("b.json", {**doc, "sizes": [rerun]})])
    # The 100-document size of the later file replaces the first file's; the largest size stays the first file's.
    assert [s["documents"] for s in merged["sizes"]] == [100, 1000]
    assert merged["sizes"][0]["measured"] == small["measured"][:1]
    assert merged["note"] == (
        "The sizes come from separate runs: 100 documents run r2 (code `v2`) in `b.json`; "
        "1,000 documents run r1 (code `v1`) in `a.json`."
    )
    assert "note" not in cm.merged_sizes([("a.json", first)])
    with pytest.raises(SystemExit, match=r"b\.json: its corpus 'generated' differs from a\.json's"):
        cm.merged_sizes([("a.json", first), ("b.json", {**doc, "corpus": "generated"})])
