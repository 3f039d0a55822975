"""Loading the configuration: a YAML file per environment, possibly built on a base file, validated before any work.

:func:`load_config` reads a file and the chain of base files it names (a top-level ``base: cluster.yaml``, relative
to the file that names it), merges them (mappings key by key with the naming file winning; lists and other values
replaced whole), applies ``--set section.key=value`` overrides and validates the result against :class:`Config`,
whose section models live in :mod:`realsyn.config_sections`. An error names the key and
where its value came from: the file that set it (the base file or the one built on it) or the ``--set``. Languages,
models and paths the config names are checked to exist before any work (:func:`check_references`); the model
registry file of ``embed.registry`` is found by :func:`registry_path`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from realsyn.config_sections import (
    Config,
    EmbedConfig,
)
from udfs.models import ModelKind, RegistryError, get_spec, load_registry

# The folder of the source checkout (or of the editable install): where a relative embed.registry is looked up
# after the working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The top-level key of a config file that names the file it builds on.
BASE_KEY = "base"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ConfigFile:
    """One file of a configuration: its path (as named: given, or its base key joined to the naming file's folder)
    and the YAML it holds itself (without its ``base`` key)."""

    path: Path
    tree: dict[str, Any]


def read_config_files(path: str | Path) -> list[ConfigFile]:
    """``path`` and the chain of base files it names, ``path`` first.

    Raises ConfigError naming the file that cannot be read, is not a YAML mapping, names no valid base, or names a
    base already in the chain (a loop).
    """
    files: list[ConfigFile] = []
    current: Path | None = Path(path)
    while current is not None:
        if any(current.resolve() == f.path.resolve() for f in files):
            chain = " -> ".join([*(str(f.path) for f in files), str(current)])
            raise ConfigError(f"{files[-1].path}: {BASE_KEY}: a loop of base files: {chain}")
        tree = _read_yaml(current, files[-1].path if files else None)
        base = tree.pop(BASE_KEY, None)
        files.append(ConfigFile(current, tree))
        if base is None:
            current = None
        elif isinstance(base, str) and base.strip():
            current = current.parent / base  # an absolute base stays as it is
        else:
            raise ConfigError(f"{current}: {BASE_KEY}: expected the file name of a base config, got {base!r}")
    return files


def _read_yaml(path: Path, named_by: Path | None) -> dict[str, Any]:
    """The top-level mapping of ``path``; ``named_by``: the file whose ``base`` key names it, for the message."""
    where = f"{path} (base of {named_by})" if named_by is not None else str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{where}: cannot read config file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    return raw


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, as a new tree: mappings merge key by key, ``over`` winning; anything else (a
    list, a value, a mapping where the other has none) is taken whole from ``over`` where it has the key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        old = out.get(key)
        out[key] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else copy.deepcopy(value)
    return out


def _free_mapping(annotation: Any) -> bool:
    """Whether a field holds a free mapping (``dict[str, str]``) whose own keys may contain dots."""
    return getattr(annotation, "__origin__", None) is dict or annotation is dict


def _split_dotted(dotted: str) -> list[str]:
    """The path of a ``--set`` key: split on dots, except inside a free mapping such as ``spark.conf``, whose
    keys are Spark's own dotted names (``spark.conf.spark.driver.memory`` -> spark / conf / spark.driver.memory)."""
    parts = dotted.split(".")
    model: Any = Config
    for i, part in enumerate(parts[:-1]):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return parts
        if _free_mapping(field.annotation):
            return [*parts[: i + 1], ".".join(parts[i + 1 :])]
        model = field.annotation
    return parts


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = _split_dotted(dotted)
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[leaf] = value


def _from_override(key: str, overridden: set[str]) -> bool:
    """Whether the error at ``key`` comes from a ``--set`` (the key itself, a section above it or a key below it)."""
    return any(key == o or o.startswith(key + ".") or key.startswith(o + ".") for o in overridden)


def _held(tree: Any, loc: tuple[str | int, ...]) -> str | None:
    """How ``tree`` (one file's YAML) holds the key at ``loc``: "mapping" (keys there, merged with the files
    below), "value" (a value there or above it that is not a mapping: it replaced the files below), None (nothing,
    or an empty mapping, which adds nothing)."""
    node = tree
    for part in loc:
        if not isinstance(node, dict):
            return "value"
        if part not in node:
            return None
        node = node[part]
    if isinstance(node, dict):
        return "mapping" if node else None
    return "value"


def _origin(loc: tuple[str | int, ...], overridden: set[str], files: list[ConfigFile]) -> str:
    """Where the value at ``loc`` came from: ``--set K over FILE``, the file that set it, or the files whose
    mappings merged into it ("a.yaml over base.yaml"); the first file where none set it (a missing key)."""
    top = files[0].path
    key = ".".join(str(p) for p in loc)
    named = [o for o in sorted(overridden) if _from_override(key, {o})]
    if named:
        return f"--set {named[0]} over {top}"
    sources: list[Path] = []
    for f in files:
        held = _held(f.tree, loc)
        if held == "mapping":
            sources.append(f.path)
        elif held == "value":
            if not sources:
                sources.append(f.path)
            break
    return " over ".join(str(p) for p in sources) if sources else str(top)


def check_references(cfg: Config) -> list[tuple[str, str]]:
    """``(key, problem)`` for every configured language, model or path that does not exist on this machine.

    Cheap (no model is loaded, no Spark): run before any work, so that a missing spaCy model or an unknown
    language stops the run at once instead of failing inside Spark tasks minutes later.
    """
    import importlib.util

    problems: list[tuple[str, str]] = []
    scfg = cfg.extract_sentences
    from punkt.data import LANGUAGES

    if scfg.language not in LANGUAGES:
        problems.append(
            (
                "extract_sentences.language",
                f"no Punkt model for {scfg.language!r}; known: {', '.join(sorted(LANGUAGES))}",
            )
        )
    if scfg.cat.enabled:
        parser = scfg.cat.parser
        if "/" in parser or parser.startswith((".", "~")):
            if not Path(parser).expanduser().is_dir():
                problems.append(("extract_sentences.cat.parser", f"no spaCy pipeline folder at {parser!r}"))
        elif not parser.isidentifier() or importlib.util.find_spec(parser) is None:
            problems.append(
                (
                    "extract_sentences.cat.parser",
                    f"spaCy model package {parser!r} is not installed (pip install it, or name a folder)",
                )
            )
    problems += _embed_model_problems(cfg.embed)
    problems += _generate_model_problems(cfg)
    perplexity = scfg.perplexity
    if perplexity.enabled and _looks_like_path(perplexity.model) and not Path(perplexity.model).exists():
        problems.append(("extract_sentences.perplexity.model", f"no model folder at {perplexity.model!r}"))
    return problems


def _embed_model_problems(embed: EmbedConfig) -> list[tuple[str, str]]:
    """The registry file must read and name ``embed.model`` (weights are checked by the embed stage)."""
    path = registry_path(embed.registry)
    if not path.exists() and not path.is_absolute() and "PYSPARK_GATEWAY_PORT" in os.environ:
        # Under spark-submit the registry may come with --files (spark-submit.sh ships conf/models.yaml), which
        # the driver can see only once its Spark context exists: the embed and generate stages check it there.
        return []
    try:
        registry = load_registry(path)
    except RegistryError as e:
        return [("embed.registry", str(e))]
    if embed.model not in registry:
        return [("embed.model", f"{embed.model!r} is not in {path}; known models: {', '.join(sorted(registry))}")]
    return []


def _generate_model_problems(cfg: Config) -> list[tuple[str, str]]:
    """The generate stage's entries of its mode (``captioner`` and ``llm``, or ``vlm``) must be in the registry, of
    their kind; the entries of the other mode are not read, so they are not checked. An unreadable registry is
    embed.registry's problem (:func:`_embed_model_problems`)."""
    path = registry_path(cfg.embed.registry)
    try:
        registry = load_registry(path)
    except RegistryError:
        return []
    g = cfg.generate
    wanted: list[tuple[str, str, ModelKind]] = [("generate.vlm", g.vlm, "vlm")]
    if g.mode == "pipeline":
        wanted = [("generate.captioner", g.captioner, "captioner"), ("generate.llm", g.llm, "llm")]
    problems = []
    for key, name, kind in wanted:
        try:
            get_spec(registry, name, str(path), kind=kind)
        except RegistryError as e:
            problems.append((key, str(e)))
    return problems


def registry_path(registry: str) -> Path:
    """Where the registry file ``registry`` (``embed.registry``) is read from.

    An absolute path is taken as it is. A relative one is looked up in the working directory, then in the project
    folder (a source checkout or an editable install), then among the files shipped with the Spark application
    (``--files``, which spark-submit.sh uses for conf/models.yaml) under its file name: a job submitted from
    another folder, or a driver started by the cluster in a folder of its own, imports the code from a zip that
    holds no conf/. Where none exists, the path as given (reading it fails naming it).
    """
    path = Path(registry)
    if path.is_absolute() or path.exists():
        return path
    if (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    from pyspark import SparkContext, SparkFiles

    if SparkContext._active_spark_context is None:  # no Spark application: nothing was shipped
        return path
    shipped = Path(SparkFiles.get(path.name))
    return shipped if shipped.exists() else path


def _looks_like_path(name: str) -> bool:
    """A local folder rather than a Hub id ("gpt2-large", "org/model")."""
    return name.startswith(("/", "./", "../", "~"))


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    got = error.get("input")
    shown = "" if error["type"] in {"missing", "value_error"} or isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read ``path`` and its base files, apply ``key=value`` overrides and validate; raise ConfigError naming the
    key and the file (or ``--set``) its value came from."""
    files = read_config_files(path)
    raw: dict[str, Any] = {}
    for f in reversed(files):  # the deepest base first, each file over the ones it builds on
        raw = merge(raw, f.tree)
    overridden: set[str] = set()
    for item in overrides or []:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. ingest.max_text_chars=5000")
        _set_dotted(raw, dotted.strip(), yaml.safe_load(text))
        overridden.add(dotted.strip())
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        lines = [f"{_origin(err['loc'], overridden, files)}: {_describe(err)}" for err in e.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    problems = check_references(cfg)
    if problems:
        lines = [f"{_origin(tuple(key.split('.')), overridden, files)}: {key}: {problem}" for key, problem in problems]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return cfg
