"""Config loading: the shipped files are valid, base files merge as documented, and every kind of mistake names
its key and the file (or --set) its value came from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from realsyn.config import ConfigError, load_config, merge, read_config_files
from realsyn.config_sections import Config, FetchConfig
from udfs.models import DevicePolicy

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
CLUSTER_ENVIRONMENTS = ["databricks.yaml", "emr.yaml"]
# The sections that run a model or vector products: each has a `device` key of one shape.
DEVICE_SECTIONS = {
    "embed",
    "extract_sentences.perplexity",
    "cluster_sentences",
    "cluster_images",
    "retrieve",
    "generate",
}


@pytest.mark.parametrize("name", ["local.yaml", *CLUSTER_ENVIRONMENTS])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(CONF / name)
    assert cfg.ingest.inputs, f"{name} configures no ingest input"


def test_local_config_is_self_contained() -> None:
    assert [f.path for f in read_config_files(CONF / "local.yaml")] == [CONF / "local.yaml"]


@pytest.mark.parametrize("name", CLUSTER_ENVIRONMENTS)
def test_cluster_configs_build_on_the_base_and_repeat_none_of_it(name: str) -> None:
    env, base = read_config_files(CONF / name)
    assert base.path == CONF / "cluster.yaml"

    def leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
        if not isinstance(tree, dict) or not tree:
            return {prefix: tree}
        return {k: v for key, value in tree.items() for k, v in leaves(value, (*prefix, key)).items()}

    base_values = leaves(base.tree)
    repeated = [".".join(k) for k, v in leaves(env.tree).items() if base_values.get(k, object()) == v]
    assert not repeated, f"{name} repeats values of cluster.yaml: {repeated}"


def sections(model: type[BaseModel], prefix: str = "") -> dict[str, type[BaseModel]]:
    """Every section model below ``model`` by its dotted key (``extract_sentences.perplexity``)."""
    found: dict[str, type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            key = f"{prefix}{name}"
            found[key] = annotation
            found.update(sections(annotation, key + "."))
    return found


def test_device_keys_have_one_shape() -> None:
    with_device = {key for key, model in sections(Config).items() if "device" in model.model_fields}
    assert with_device == DEVICE_SECTIONS
    for key in with_device:
        field = sections(Config)[key].model_fields["device"]
        assert field.annotation == DevicePolicy, key
        assert set(get_args(field.annotation)) == {"auto", "cpu", "cuda"}


def test_embedding_selectors_are_named_for_what_they_hold() -> None:
    for key, model in sections(Config).items():
        assert "model_id" not in model.model_fields, f"{key}.model_id: name the key for what it holds"
    holders = {key for key, model in sections(Config).items() if "embedding_model" in model.model_fields}
    assert holders == {
        "cluster_sentences",
        "cluster_images",
        "retrieve",
        "semantic_dedup.images",
        "semantic_dedup.sentences",
    }


@pytest.mark.parametrize("name", ["local.yaml", "cluster.yaml"])
def test_every_device_key_carries_the_same_comment(name: str) -> None:
    lines = (CONF / name).read_text().splitlines()
    comments = []
    for i, line in enumerate(lines):
        if line.strip().startswith("device:"):
            above = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                above.insert(0, lines[j].strip())
                j -= 1
            comments.append(" ".join(above[:2]))
    assert len(comments) == len(DEVICE_SECTIONS)
    assert len(set(comments)) == 1, comments
    assert re.match(r"# Device\. auto: .* cpu: .* cuda: .*naming this key\.$", comments[0])


def write_files(tmp_path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_merge_mappings_key_by_key_and_replace_everything_else() -> None:
    base = {"a": {"x": 1, "y": [1, 2], "z": {"deep": 1, "kept": 2}}, "b": 1, "c": {"m": 1}}
    over = {"a": {"y": [3], "z": {"deep": 9}}, "c": None, "d": 4}
    assert merge(base, over) == {"a": {"x": 1, "y": [3], "z": {"deep": 9, "kept": 2}}, "b": 1, "c": None, "d": 4}
    assert base["a"]["y"] == [1, 2]  # inputs are left alone


def test_a_base_file_is_merged_under_the_file_that_names_it(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "shared/root.yaml": (
                "spark:\n  conf: {a: '1', b: '2'}\nfetch:\n  concurrency: 7\n  allowed_schemes: [http, https, data]\n"
                "balance:\n  scales:\n    big: {cap: 9}\n"
            ),
            "shared/mid.yaml": "base: root.yaml\nfetch:\n  per_host: 3\n  allowed_schemes: [https]\n",
            "env.yaml": (
                "base: shared/mid.yaml\nstorage:\n  root: /x\nspark:\n  conf: {b: '3'}\n"
                "balance:\n  scales:\n    small: {cap: 1}\n"
            ),
        },
    )
    files = read_config_files(tmp_path / "env.yaml")
    assert [f.path for f in files] == [
        tmp_path / "env.yaml",
        tmp_path / "shared/mid.yaml",
        tmp_path / "shared/root.yaml",
    ]
    cfg = load_config(tmp_path / "env.yaml", ["fetch.per_host=5"])
    assert cfg.storage.root == "/x"
    assert cfg.spark.conf == {"a": "1", "b": "3"}  # a mapping merges, the naming file wins
    assert (cfg.fetch.concurrency, cfg.fetch.per_host) == (7, 5)  # from the deepest base; --set over everything
    assert cfg.fetch.allowed_schemes == ["https"]  # a list is replaced whole
    assert set(cfg.balance.scales) == {"big", "small"}
    assert cfg.fetch.max_attempts == FetchConfig().max_attempts  # set in no file: the default


def test_the_naming_file_wins_over_a_bad_value_of_its_base(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "env.yaml": "base: base.yaml\ningest:\n  max_text_chars: 5\n",
            "base.yaml": "storage: {root: /x}\ningest:\n  max_text_chars: lots\n",
        },
    )
    assert load_config(tmp_path / "env.yaml").ingest.max_text_chars == 5


@pytest.mark.parametrize(
    ("env", "base", "overrides", "message"),
    [
        # A bad value set in the base is reported with the base file, one set in the naming file with that file.
        (
            "storage:\n  root: /x\n",
            "ingest:\n  max_text_chars: lots\n",
            [],
            r"\bbase\.yaml: ingest\.max_text_chars: .*'lots'",
        ),
        (
            "ingest:\n  max_text_chars: -1\n",
            "ingest:\n  max_text_chars: 5\n",
            [],
            r"\benv\.yaml: ingest\.max_text_chars: .*greater",
        ),
        ("storage:\n  root: /x\n", "retrieve:\n  top_kk: 3\n", [], r"\bbase\.yaml: retrieve\.top_kk: Extra inputs"),
        (
            "storage:\n  root: /x\n",
            "ingest:\n  inputs:\n    - path: /d\n",
            [],
            r"\bbase\.yaml: ingest\.inputs\.0\.layout: Field required",
        ),
        (
            "ingest:\n  inputs:\n    - path: /d\n",
            "storage:\n  root: /x\ningest:\n  inputs:\n    - {path: /d, layout: mmc4, source: s}\n",
            [],
            r"\benv\.yaml: ingest\.inputs\.0\.layout: Field required",
        ),
        # A section whose keys come from both files names both; a --set names itself over the naming file.
        (
            "retrieve:\n  shortlist: 1\n",
            "storage:\n  root: /x\nretrieve:\n  prefilter_dim: 4\n",
            [],
            r"\benv\.yaml over .*base\.yaml: retrieve: .*shortlist",
        ),
        (
            "storage:\n  root: /x\n",
            "ingest:\n  max_text_chars: 5\n",
            ["ingest.max_text_chars=x"],
            r"--set ingest\.max_text_chars over .*env\.yaml",
        ),
        # A reference that does not exist on this machine, named with the file that set it.
        (
            "storage:\n  root: /x\n",
            "extract_sentences:\n  cat:\n    parser: ./no/such/dir\n",
            [],
            r"\bbase\.yaml: extract_sentences\.cat\.parser: no spaCy pipeline folder",
        ),
        ("embed:\n  model: nope\n", "storage:\n  root: /x\n", [], r"\benv\.yaml: embed\.model: 'nope' is not in"),
        # Missing everywhere: the naming file.
        ("ingest: {}\n", "fetch: {}\n", [], r"\benv\.yaml: storage: Field required"),
        # A section the base only holds as an empty mapping (as cluster.yaml holds storage) is the naming file's.
        ("ingest: {}\n", "storage: {}\n", [], r"\benv\.yaml: storage: .*exactly one"),
    ],
)
def test_errors_name_the_file_that_set_the_value(
    tmp_path: Path, env: str, base: str, overrides: list[str], message: str
) -> None:
    write_files(tmp_path, {"env.yaml": "base: base.yaml\n" + env, "base.yaml": base})
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "env.yaml", overrides)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"env.yaml": "base: gone.yaml\n"}, r"gone\.yaml \(base of .*env\.yaml\): cannot read config file"),
        ({"env.yaml": "base: env.yaml\n"}, r"env\.yaml: base: a loop of base files: .*env\.yaml -> .*env\.yaml$"),
        (
            {"env.yaml": "base: sub/a.yaml\n", "sub/a.yaml": "base: b.yaml\n", "sub/b.yaml": "base: ../env.yaml\n"},
            r"b\.yaml: base: a loop of base files: .*env\.yaml -> .*a\.yaml -> .*b\.yaml -> .*env\.yaml$",
        ),
        ({"env.yaml": "base: [a.yaml]\n"}, r"env\.yaml: base: expected the file name of a base config"),
        ({"env.yaml": "base: b.yaml\n", "b.yaml": "- a\n"}, r"b\.yaml \(base of .*env\.yaml\): the top level must be"),
        ({"env.yaml": "base: b.yaml\n", "b.yaml": "x: [\n"}, r"b\.yaml \(base of .*env\.yaml\): not valid YAML"),
    ],
)
def test_a_broken_chain_of_base_files_names_the_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    write_files(tmp_path, files)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "env.yaml")


def test_the_base_keys_of_the_shipped_files_are_relative() -> None:
    for name in CLUSTER_ENVIRONMENTS:
        assert yaml.safe_load((CONF / name).read_text())["base"] == "cluster.yaml"


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
        (
            "storage:\n  root: /x\ngenerate:\n  vlm_user_prompt: 'Describe {caption}'\n",
            [],
            r"env\.yaml: generate\.vlm_user_prompt: Value error, generate\.vlm_user_prompt must hold "
            r"\{retrieved_text\}; holds \{caption\}, which vlm mode does not fill in",
        ),
        (
            "storage:\n  root: /x\ngenerate:\n  mode: vlm\n",
            ["generate.vlm=tiny-random-llm"],
            r"--set generate\.vlm over .*env\.yaml: generate\.vlm: model 'tiny-random-llm' of .*models\.yaml is a llm, "
            r"not a vlm; known: .*tiny-random-vlm",
        ),
        (
            "storage:\n  root: /x\ngenerate:\n  llm: nope\n",
            [],
            r"env\.yaml: generate\.llm: model 'nope' is not in",
        ),
        ("storage:\n  root: /x\ngenerate:\n  mode: vlm-ish\n", [], r"env\.yaml: generate\.mode: Input should be"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_generation_key_holds_the_models_and_prompt_version_of_the_mode(tmp_path: Path) -> None:
    pipeline = load_config(write(tmp_path, "storage:\n  root: /x\n"), ["generate.vlm=not-read-in-pipeline-mode"])
    assert pipeline.generate.key("clip").columns() == {
        "model_id": "clip",
        "captioner_id": "tiny-random-captioner",
        "llm_id": "tiny-random-llm",
        "prompt_version": "v1",
    }
    vlm = load_config(write(tmp_path, "storage:\n  root: /x\n"), ["generate.mode=vlm", "generate.llm=not-read"])
    assert vlm.generate.key("clip").columns() == {
        "model_id": "clip",
        "captioner_id": "tiny-random-vlm",
        "llm_id": "tiny-random-vlm",
        "prompt_version": "vlm-v1",
    }


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml")
