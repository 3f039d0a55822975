"""Structure of the deployment files: the Databricks Asset Bundle (databricks.yml, resources/) and the EMR steps (emr/).

Both run the pipeline one stage per task (``realsyn-pipeline --only <stage>``); their task graph must be the
pipeline's stage graph, every task's parameters must load as a config, and the bundle's job must be a valid job
definition (``databricks-bundles``' typed resources reject unknown or misspelt fields, offline). A config built on a
base file reaches the job with that file beside it, wherever the job reads it from a path.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from databricks.bundles.jobs import Job

from realsyn.config import load_config, read_config_files
from realsyn.pipeline import STAGES as PIPELINE_STAGES

REPO = Path(__file__).resolve().parents[1]
# The pipeline's stages and what each depends on: the stage table itself.
STAGES: dict[str, set[str]] = {s.name: set(s.after) for s in PIPELINE_STAGES}
GPU_STAGES = {"embed", "generate"}
ENTRY_POINT = "realsyn-pipeline"
EMR_HOME = "/home/hadoop/realsyn"  # where emr/bootstrap.sh puts the job files on every node


def pyproject_scripts() -> dict[str, str]:
    """The console scripts of pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]  # tomllib is Python 3.11+
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, flags=re.MULTILINE))


def bundle() -> tuple[dict[str, Any], dict[str, Any]]:
    """databricks.yml and the union of the resources it includes."""
    root = yaml.safe_load((REPO / "databricks.yml").read_text())
    resources: dict[str, Any] = {}
    for pattern in root["include"]:
        for path in sorted(REPO.glob(pattern)):
            for kind, items in yaml.safe_load(path.read_text())["resources"].items():
                resources.setdefault(kind, {}).update(items)
    return root, resources


def substitute(text: str, root: dict[str, Any]) -> str:
    """Bundle variables replaced by their defaults, the workspace file path by this checkout."""
    text = text.replace("${workspace.file_path}", str(REPO))
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(root["variables"][m.group(1)]["default"]), text)


def job_arguments(params: list[str]) -> tuple[str, list[str], str]:
    """(--conf, [--set values], --only) of a task's parameters; anything else fails the test."""
    conf, sets, only = None, [], None
    it = iter(params)
    for flag in it:
        value = next(it)
        if flag == "--conf":
            conf = value
        elif flag == "--set":
            sets.append(value)
        elif flag == "--only":
            only = value
        else:
            pytest.fail(f"unexpected parameter {flag} {value}")
    assert conf is not None and only is not None, params
    return conf, sets, only


def test_bundle_job_is_the_stage_graph() -> None:
    root, resources = bundle()
    assert set(root["variables"]) >= {"catalog", "schema", "volume"}
    assert set(root["targets"]) == {"dev", "prod"}
    assert [a["type"] for a in root["artifacts"].values()] == ["whl"]
    job_def = resources["jobs"]["realsyn_pipeline"]
    Job.from_dict(job_def)  # raises on an unknown field anywhere in the job
    tasks = job_def["tasks"]
    assert {t["task_key"]: {d["task_key"] for d in t.get("depends_on", [])} for t in tasks} == STAGES
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job_def["job_clusters"]}
    for task in tasks:
        wheel = task["python_wheel_task"]
        assert (wheel["package_name"], wheel["entry_point"]) == ("realsyn", ENTRY_POINT)
        conf, sets, only = job_arguments([substitute(p, root) for p in wheel["parameters"]])
        assert only == task["task_key"]
        cfg = load_config(conf, sets)  # every --set names a valid key with a valid value
        assert cfg.storage.catalog == "main.realsyn"
        assert [f.path.name for f in read_config_files(conf)] == ["databricks.yaml", "cluster.yaml"]
        for f in read_config_files(conf):  # the bundle uploads its folder's files: the base must be one of them
            assert f.path.resolve().is_relative_to(REPO) and not ignored_by_git(f.path), f.path
        assert Path(cfg.embed.registry).is_file()
        cluster = clusters[task["job_cluster_key"]]
        gpus = cluster.get("spark_conf", {}).get("spark.task.resource.gpu.amount")
        assert (gpus == "1") == (only in GPU_STAGES), (only, task["job_cluster_key"])
        assert task["libraries"] == [{"whl": "../dist/*.whl"}]


def test_emr_steps_run_the_stages_in_dependency_order() -> None:
    steps = json.loads((REPO / "emr" / "steps.json").read_text())
    done: set[str] = set()
    for step in steps:
        assert (step["Type"], step["Jar"], step["ActionOnFailure"]) == (
            "CUSTOM_JAR",
            "command-runner.jar",
            "CANCEL_AND_WAIT",
        )
        args = step["Args"]
        assert args[:2] == ["spark-submit", "--master"]
        script = next(a for a in args if a.endswith(".py"))
        assert script == f"{EMR_HOME}/jobs/pipeline.py"
        local = [a.replace(EMR_HOME, str(REPO)) for a in args[args.index(script) + 1 :]]
        conf, sets, only = job_arguments(local)
        assert step["Name"] == f"realsyn-{only}"
        assert STAGES[only] <= done, f"{only} runs before {STAGES[only] - done}"
        done.add(only)
        load_config(conf, sets)
        for f in read_config_files(conf):  # bootstrap.sh copies conf/* to EMR_HOME/conf on every node
            assert f.path.resolve().parent == REPO / "conf", f.path
        gpu = "spark.task.resource.gpu.amount=1" in args
        assert gpu == (only in GPU_STAGES), only
    assert done == set(STAGES)


def ignored_by_git(path: Path) -> bool:
    """Whether git (and so ``databricks bundle deploy``, which syncs what git does not ignore) ignores ``path``."""
    return subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO, check=False).returncode == 0


def test_emr_bootstrap_copies_every_config_file() -> None:
    copied = re.findall(r'--include "([^"]+)"', (REPO / "emr" / "bootstrap.sh").read_text())
    assert "conf/*" in copied


@pytest.mark.parametrize("name", ["emr.yaml", "databricks.yaml"])
def test_spark_submit_ships_the_base_files_of_the_cluster_configs(name: str) -> None:
    shipped = re.search(r'^files="([^"]+)"$', (REPO / "spark-submit.sh").read_text(), flags=re.MULTILINE)
    assert shipped is not None
    names = {Path(f.replace("$here", str(REPO))).name for f in shipped[1].split(",")}
    bases = [f.path for f in read_config_files(REPO / "conf" / name)[1:]]
    assert bases and {b.name for b in bases} <= names


def test_emr_configurations() -> None:
    classes = {c["Classification"]: c for c in json.loads((REPO / "emr" / "configurations.json").read_text())}
    assert classes["delta-defaults"]["Properties"] == {"delta.enabled": "true"}
    assert classes["yarn-site"]["Properties"]["yarn.resource-types"] == "yarn.io/gpu"
    python = classes["spark-defaults"]["Properties"]["spark.pyspark.python"]
    assert python in (REPO / "emr" / "bootstrap.sh").read_text()  # the interpreter the bootstrap installs
    subprocess.run(["bash", "-n", str(REPO / "emr" / "bootstrap.sh")], check=True)


def test_the_entry_point_is_a_console_script() -> None:
    scripts = pyproject_scripts()
    assert scripts[ENTRY_POINT] == "jobs.pipeline:main"
    assert (REPO / "jobs" / "pipeline.py").is_file()
