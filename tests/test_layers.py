"""The layers of realsyn/, read from the source with ``ast`` (no import, no Spark).

DESIGN.md: no stage reaches into another stage's module. A stage module (one step of the pipeline) imports no other
stage; what several stages share lives in the shared layer, which imports no stage; only the orchestration
(``realsyn.pipeline``, and ``realsyn.cli`` that the jobs call) imports stages. ``config`` and ``contracts``, which
every other module builds on, import no other realsyn module and neither the fetcher nor the CLIP pipelines. udfs/
holds pure batch functions: it imports neither realsyn nor Spark.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What several stages share. Every other module of realsyn/ but the orchestration is a stage, so a new module is
# held to a stage's rule until it is named here.
SHARED = frozenset(
    {
        "components",
        "config",
        "contracts",
        "funnel",
        "ids",
        "lock",
        "semdedup",
        "spark",
        "tables",
        "tree",
        "vectors",
        "workers",
    }
)
ORCHESTRATION = frozenset({"cli", "pipeline"})
BASE = frozenset({"config", "contracts"})
LARGE_UDFS = frozenset({"udfs.fetch", "udfs.clip"})
KNOWN_STAGES = frozenset(
    {
        "balance",
        "clustering",
        "embed",
        "export",
        "fetch",
        "generate",
        "images",
        "ingest",
        "report",
        "retrieval",
        "sentences",
    }
)


def modules(package: str) -> dict[str, Path]:
    """The modules of ``package`` by short name (``__init__`` aside)."""
    return {p.stem: p for p in sorted((REPO / package).glob("*.py")) if p.stem != "__init__"}


REALSYN = modules("realsyn")
STAGES = frozenset(REALSYN) - SHARED - ORCHESTRATION


def imported(path: Path) -> set[str]:
    """Every name ``path`` imports, at the top, inside a function or under TYPE_CHECKING, dotted:
    ``from a.b import c`` gives ``a.b`` and ``a.b.c``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None, f"{path}:{node.lineno}: a relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def realsyn_imports(path: Path) -> set[str]:
    """The modules of realsyn/ that ``path`` imports, by short name (``from realsyn import x`` included)."""
    parts = (name.split(".") for name in imported(path))
    return {p[1] for p in parts if len(p) > 1 and p[0] == "realsyn" and p[1] in REALSYN}


def test_every_named_module_exists_and_the_stages_are_stages() -> None:
    assert not (SHARED | ORCHESTRATION) - set(REALSYN), "a module named above is not in realsyn/"
    assert not KNOWN_STAGES - STAGES, "a stage is named as shared or as orchestration"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_imports_no_other_stage(name: str) -> None:
    wrong = realsyn_imports(REALSYN[name]) & ((STAGES - {name}) | ORCHESTRATION)
    assert not wrong, f"realsyn/{name}.py imports {sorted(wrong)}: move what they share to the shared layer"


@pytest.mark.parametrize("name", sorted(SHARED))
def test_the_shared_layer_imports_no_stage(name: str) -> None:
    wrong = realsyn_imports(REALSYN[name]) & (STAGES | ORCHESTRATION)
    assert not wrong, f"realsyn/{name}.py (shared) imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(BASE))
def test_config_and_contracts_import_no_other_realsyn_module_nor_a_large_udfs_module(name: str) -> None:
    path = REALSYN[name]
    assert realsyn_imports(path) <= BASE, f"realsyn/{name}.py imports {sorted(realsyn_imports(path) - BASE)}"
    assert not imported(path) & LARGE_UDFS, f"realsyn/{name}.py imports {sorted(imported(path) & LARGE_UDFS)}"


@pytest.mark.parametrize("name", sorted(modules("udfs")))
def test_udfs_import_neither_realsyn_nor_spark(name: str) -> None:
    wrong = {n for n in imported(REPO / "udfs" / f"{name}.py") if n.split(".")[0] in ("realsyn", "pyspark")}
    assert not wrong, f"udfs/{name}.py imports {sorted(wrong)}"
