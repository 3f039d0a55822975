"""The stage table and stage selection (no Spark needed)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from realsyn.config import ConfigError, load_config
from realsyn.pipeline import (
    STAGE_NAMES,
    STAGES,
    PipelineSummary,
    StageSelectionError,
    check_config,
    check_order,
    run_config,
    select_stages,
)
from realsyn.runs import Stage, StageRun
from realsyn.stages.export import ExportSummary, ScaleExport

REPO = Path(__file__).resolve().parents[2]


def names(stages: list[Stage]) -> list[str]:
    return [s.name for s in stages]


def test_the_table_holds_the_agreed_stages_and_dependencies() -> None:
    assert {s.name: s.after for s in STAGES} == {
        "ingest": (),
        "fetch": ("ingest",),
        "extract_images": ("fetch",),
        "extract_sentences": ("ingest",),
        "embed": ("extract_images", "extract_sentences"),
        "semantic_dedup": ("embed",),
        "cluster_sentences": ("semantic_dedup",),
        "retrieve": ("cluster_sentences",),
        "cluster_images": ("semantic_dedup",),
        "generate": ("retrieve",),
        "balance": ("generate", "cluster_images"),
        "export": ("balance",),
        "report": ("export",),
    }
    # Each stage's function is run_<name> of realsyn.stages.<name>.
    assert all((s.run.__module__, s.run.__name__) == (f"realsyn.stages.{s.name}", f"run_{s.name}") for s in STAGES)


def test_an_order_that_breaks_a_dependency_is_refused() -> None:
    a, b = Stage("a", (), print), Stage("b", ("a",), print)
    check_order([a, b])
    with pytest.raises(ValueError, match="'b' runs after \\['a'\\]"):
        check_order([b, a])
    with pytest.raises(ValueError, match="twice"):
        check_order([a, a])


def test_from_until_and_only_select_by_position_in_the_table() -> None:
    assert names(select_stages()) == list(STAGE_NAMES)
    assert names(select_stages("retrieve", "cluster_images")) == ["retrieve", "cluster_images"]
    assert names(select_stages(until="fetch")) == ["ingest", "fetch"]
    assert names(select_stages(only=["embed", "ingest"])) == ["ingest", "embed"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "download"}, "--from: unknown stage 'download'"),
        ({"until": "dedup"}, "--until: unknown stage 'dedup'"),
        ({"only": ["embed", "clip"]}, "--only: unknown stage 'clip'"),
        ({"start": "embed", "only": ["embed"]}, "--only cannot be combined"),
        ({"start": "retrieve", "until": "ingest"}, "--from retrieve comes after --until ingest"),
    ],
)
def test_a_bad_selection_names_the_flag(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(StageSelectionError, match=message):
        select_stages(**kwargs)  # type: ignore[arg-type]


def test_an_unknown_stage_fails_before_any_work(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"storage:\n  root: {tmp_path / 'lake'}\n", encoding="utf-8")
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", str(conf), "--from", "embedding"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "--from: unknown stage 'embedding'; the stages are ingest, fetch," in done.stderr
    assert not (tmp_path / "lake").exists()  # no lock, no log, no table


def test_a_setting_a_selected_stage_cannot_use_fails_before_any_work(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yaml"
    conf.write_text("storage:\n  root: s3a://bucket/realsyn\n", encoding="utf-8")
    argv = [sys.executable, "-m", "jobs.pipeline", "--conf", str(conf)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert f"config error: report.output: set a local folder when tables are not in a local storage.root ({conf})" in (
        done.stderr
    )
    assert "spark" not in done.stdout.lower()  # stopped before the session and the first stage
    # The check belongs to the stage: a run without the report stage takes the same settings.
    cfg = load_config(conf)
    check_config(cfg, select_stages(until="export"))
    with pytest.raises(ConfigError, match=r"^report\.output: "):
        check_config(cfg, select_stages(start="export"))


def test_a_run_resumed_after_ingest_reads_the_demo_corpus_settings(tmp_path: Path) -> None:
    conf = tmp_path / "conf.yaml"
    raw = tmp_path / "raw"
    conf.write_text(
        f"storage:\n  root: {tmp_path / 'lake'}\npipeline:\n  demo_corpus: true\ndemo:\n  output: {raw}\n",
        encoding="utf-8",
    )
    cfg = run_config(load_config(conf))
    # The images of the demo corpus are file:// URIs under its folder: without it among the roots, a run
    # resumed --from fetch would record every one of them as blocked.
    assert str(raw) in cfg.fetch.file_roots
    assert {i.path for i in cfg.ingest.inputs} == {str(raw / "mmc4"), str(raw / "obelics")}
    assert run_config(cfg) == cfg
    plain = load_config(conf, ["pipeline.demo_corpus=false"])
    assert run_config(plain) is plain


def test_the_run_summary_lists_tables_by_layer_within_120_columns_and_says_where_to_look() -> None:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    tables = {
        "bronze.documents": 12,
        "bronze.texts": 1_234,
        "bronze.ingest_rejects": 0,
        **{f"silver.table_with_a_long_name_{i}": 10_000 * i for i in range(1, 9)},
        "silver.image_embedding_rejects": 0,
        "gold.dataset": 44,
    }
    exports = ExportSummary("/lake/exports", (ScaleExport("all", 44, 1, 10_000, 1.5, ("parquet",)),))
    runs = (
        StageRun("ingest", 1, "ok", at, at, {}, {}, None),
        StageRun("embed", 2, "skipped", at, at, {}, {}, None),
        StageRun("export", 3, "ok", at, at, {}, {}, None, summary=exports),
    )
    lines = str(PipelineSummary("r1", Path("/lake/_logs/r1.log"), runs, tables)).splitlines()

    assert lines[0] == "run r1: 3 stages: 2 ok, 1 skipped, 0 failed"
    assert lines[1] == "rows per table:"
    assert lines[2] == "  bronze  documents 12, texts 1,234"
    assert lines[3].startswith("  silver  table_with_a_long_name_1 10,000, ") and lines[4].startswith(" " * 10)
    assert "  gold    dataset 44" in lines
    assert "  empty:  bronze.ingest_rejects, silver.image_embedding_rejects" in lines
    assert lines[-3:] == [
        "exports:      /lake/exports",
        "stage runs:   gold.runs (run_id = 'r1')",
        "full log:     /lake/_logs/r1.log",
    ]
    assert all(len(line) <= 120 for line in lines)
    assert "export to" not in "\n".join(lines)  # the export's own summary was printed under its stage
