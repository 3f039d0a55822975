"""Config loading: the shipped files are valid, and every kind of mistake names its key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from realsyn.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["local.yaml", "databricks.yaml", "emr.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "conf" / name)
    assert cfg.ingest.inputs, f"{name} configures no ingest input"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "env.yaml"
    path.write_text(text)
    return path


def test_overrides_are_typed_and_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  root: /tmp/x\n")
    cfg = load_config(path, ["ingest.max_text_chars=5000", "spark.conf={a: b}", "demo.output=/data/demo"])
    assert cfg.ingest.max_text_chars == 5000
    assert cfg.spark.conf == {"a": "b"}
    assert cfg.demo.output == "/data/demo"


def test_spark_conf_keys_keep_their_dots(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  root: /tmp/x\nspark:\n  conf:\n    spark.sql.shuffle.partitions: '4'\n")
    cfg = load_config(path, ["spark.conf.spark.driver.memory=2g", "spark.master=local[1]"])
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "2g"}
    assert cfg.spark.master == "local[1]"


def test_cat_parser_off_is_not_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  root: /tmp/x\n")
    cfg = load_config(path, ["extract_sentences.cat.enabled=false", "extract_sentences.cat.parser=en_core_web_xx"])
    assert cfg.extract_sentences.cat.parser == "en_core_web_xx"


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("storage:\n  root: /x\ningest:\n  max_txt_chars: 5\n", [], r"env\.yaml: ingest\.max_txt_chars: Extra inputs"),
        ("storage:\n  root: /x\ningest:\n  max_text_chars: lots\n", [], r"env\.yaml: ingest\.max_text_chars: .*'lots'"),
        (
            "storage:\n  root: /x\ningest:\n  max_text_chars: -1\n",
            [],
            r"ingest\.max_text_chars: Input should be greater",
        ),
        ("ingest: {}\n", [], r"env\.yaml: storage: Field required"),
        ("storage:\n  root: /x\n  catalog: a.b\n", [], r"storage: .*exactly one"),
        ("storage:\n  catalog: justone\n", [], r"catalog\.schema"),
        (
            "storage:\n  root: /x\ningest:\n  inputs:\n    - path: /d\n      layout: warc\n      source: s\n",
            [],
            r"ingest\.inputs\.0\.layout: Input should be 'mmc4' or 'obelics'",
        ),
        ("storage:\n  root: /x\n", ["ingest.max_text_chars=abc"], r"--set ingest\.max_text_chars over .*env\.yaml"),
        ("storage:\n  root: /x\n", ["no_equals_sign"], r"expected key=value"),
        ("storage: [\n", [], r"env\.yaml: not valid YAML"),
        ("storage:\n  root: ''\n", [], r"env\.yaml: storage: .*storage\.root is empty"),
        (
            "storage:\n  root: /x\n",
            ["extract_sentences.cat.parser=en_core_web_xx"],
            r"--set extract_sentences\.cat\.parser over .*en_core_web_xx.* not installed",
        ),
        (
            "storage:\n  root: /x\nextract_sentences:\n  cat:\n    parser: ./no/such/dir\n",
            [],
            r"env\.yaml: extract_sentences\.cat\.parser: no spaCy pipeline folder",
        ),
        (
            "storage:\n  root: /x\n",
            ["extract_sentences.language=klingon"],
            r"--set extract_sentences\.language over .*no Punkt model for 'klingon'",
        ),
        ("storage:\n  root: /x\n", ["foo.bar=1"], r"--set foo\.bar over .*env\.yaml: foo: Extra inputs"),
        (
            "storage:\n  root: /x\n",
            ["embed.model=no-such-model"],
            r"--set embed\.model over .*'no-such-model' is not in",
        ),
        (
            "storage:\n  root: /x\n",
            ["extract_sentences.perplexity.min=300"],
            r"--set extract_sentences\.perplexity\.min over .*below max",
        ),
        (
            "storage:\n  root: /x\n",
            ["fetch.object_prefixes=[http://x]"],
            r"--set fetch\.object_prefixes over .*not an object-store",
        ),
        ("- a\n- b\n", [], r"top level must be a mapping"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
