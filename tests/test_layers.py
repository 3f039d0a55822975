"""The layers of realsyn/, read from the source with ``ast`` (no import, no Spark), and the names of the stages.

DESIGN.md: no stage reaches into another stage's module. A stage (``realsyn/stages/<name>.py``, one step of the
pipeline) imports no other stage; what several stages share lives in the modules of ``realsyn/``, which import no
stage; only the orchestration (``realsyn.pipeline``, and ``realsyn.cli`` that the jobs call) imports stages.
``config`` and ``contracts``, which every other module builds on, import no other realsyn module and neither the
fetcher nor the CLIP pipelines. udfs/ holds pure batch functions: it imports neither realsyn nor Spark. One stage
goes by one name: its module, its function, its job, its console script and its config section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

from realsyn.config_sections import Config
from realsyn.pipeline import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]

ORCHESTRATION = frozenset({"cli", "pipeline"})
BASE = frozenset({"config", "config_sections", "contracts"})
# The fetcher, every module of it (udfs.fetch_schema, its options and row schema, is what config and contracts may
# read), and the CLIP pipelines.
FETCHER = frozenset(
    {"udfs.fetch", "udfs.fetch_arrow", "udfs.addresses", "udfs.http_policy", "udfs.readers", "udfs.content_store"}
)
LARGE_UDFS = FETCHER | {"udfs.clip"}


def modules(package: str) -> dict[str, Path]:
    """The modules of ``package`` by short name (``__init__`` aside)."""
    return {p.stem: p for p in sorted((REPO / package).glob("*.py")) if p.stem != "__init__"}


SHARED = frozenset(modules("realsyn")) - ORCHESTRATION
STAGES = modules("realsyn/stages")
UDFS = modules("udfs")


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


def udfs_imports(path: Path) -> set[str]:
    """The modules of udfs/ that ``path`` imports, directly or through other modules of udfs/, dotted."""
    found: set[str] = set()
    todo = [path]
    while todo:
        for name in imported(todo.pop()):
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "udfs" and parts[1] in UDFS and f"udfs.{parts[1]}" not in found:
                found.add(f"udfs.{parts[1]}")
                todo.append(UDFS[parts[1]])
    return found


def realsyn_imports(path: Path) -> set[str]:
    """The modules of realsyn that ``path`` imports: a stage as ``stages.<name>``, a shared module by its name."""
    found = set()
    for name in imported(path):
        parts = name.split(".")
        if parts[0] != "realsyn" or len(parts) < 2:
            continue
        if parts[1] == "stages" and len(parts) > 2 and parts[2] in STAGES:
            found.add(f"stages.{parts[2]}")
        elif parts[1] in SHARED | ORCHESTRATION:
            found.add(parts[1])
    return found


def test_the_stage_table_names_exactly_the_stage_modules() -> None:
    assert sorted(STAGE_NAMES) == sorted(STAGES)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_goes_by_one_name(name: str) -> None:
    source = STAGES[name].read_text(encoding="utf-8")
    assert f"def run_{name}(" in source, f"realsyn/stages/{name}.py has no run_{name}"
    job = REPO / "jobs" / f"{name}.py"
    assert job.is_file() and f"run_{name}" in job.read_text(encoding="utf-8"), f"jobs/{name}.py does not run it"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts.get(f"realsyn-{name.replace('_', '-')}") == f"jobs.{name}:main"
    assert name in Config.model_fields, f"no config section {name!r}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_imports_no_other_stage(name: str) -> None:
    wrong = realsyn_imports(STAGES[name]) - {f"stages.{name}"} - SHARED
    assert not wrong, f"realsyn/stages/{name}.py imports {sorted(wrong)}: move what they share to realsyn/"


@pytest.mark.parametrize("name", sorted(SHARED))
def test_the_shared_layer_imports_no_stage(name: str) -> None:
    path = REPO / "realsyn" / f"{name}.py"
    wrong = realsyn_imports(path) - SHARED
    assert not wrong, f"realsyn/{name}.py (shared) imports {sorted(wrong)}"


@pytest.mark.parametrize("name", sorted(BASE))
def test_config_and_contracts_import_no_other_realsyn_module_nor_a_large_udfs_module(name: str) -> None:
    path = REPO / "realsyn" / f"{name}.py"
    assert realsyn_imports(path) <= BASE, f"realsyn/{name}.py imports {sorted(realsyn_imports(path) - BASE)}"
    large = udfs_imports(path) & LARGE_UDFS
    assert not large, f"realsyn/{name}.py imports {sorted(large)}, directly or through another module of udfs/"


def test_the_fetcher_is_every_module_named_for_it() -> None:
    assert {f"udfs.{name}" for name in UDFS} >= LARGE_UDFS, "a module named in LARGE_UDFS is not in udfs/"
    # What udfs.fetch imports, or what imports it, is the fetcher, but for what the base and other stages share.
    users = {f"udfs.{name}" for name, path in UDFS.items() if "udfs.fetch" in udfs_imports(path)}
    shared = {"udfs.fetch_schema", "udfs.decode", "udfs.ids", "udfs.urls", "udfs.images"}  # images: the perceptual hash
    unnamed = (udfs_imports(UDFS["fetch"]) | users) - shared - FETCHER
    assert not unnamed, f"{sorted(unnamed)} belong to the fetcher: name them in FETCHER"


@pytest.mark.parametrize("name", sorted(UDFS))
def test_udfs_import_neither_realsyn_nor_spark(name: str) -> None:
    wrong = {n for n in imported(REPO / "udfs" / f"{name}.py") if n.split(".")[0] in ("realsyn", "pyspark")}
    assert not wrong, f"udfs/{name}.py imports {sorted(wrong)}"
