"""Typed configuration: one YAML file per environment, validated before any work starts.

Every section is a pydantic model that forbids unknown keys, so a typo fails with the key and the file named.
Command-line overrides (``--set stage.key=value``) are applied to the parsed YAML before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Section):
    """Where tables live: a folder / URI (``root``) or a metastore ``catalog`` ("catalog.schema")."""

    root: str | None = None
    catalog: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageConfig:
        if (self.root is None) == (self.catalog is None):
            raise ValueError("set exactly one of storage.root (a folder or URI) and storage.catalog")
        if self.catalog is not None and len(self.catalog.split(".")) != 2:
            raise ValueError(f"storage.catalog must look like 'catalog.schema', got {self.catalog!r}")
        return self


class SparkConfig(Section):
    """How to build a Spark session when none is running (local runs); ignored under spark-submit."""

    master: str = "local[2]"
    app_name: str = "realsyn"
    delta_from_maven: bool = True
    conf: dict[str, str] = Field(default_factory=dict)


class IngestInput(Section):
    """One input dump of interleaved documents."""

    path: str
    layout: Literal["mmc4", "obelics"]
    format: Literal["jsonl", "parquet"] = "jsonl"
    source: str = Field(min_length=1)


class IngestConfig(Section):
    """Bronze ingest of OBELICS / MMC4 documents."""

    inputs: list[IngestInput] = Field(default_factory=list)
    max_text_chars: int = Field(default=100_000, gt=0)
    max_images_per_document: int = Field(default=1_000, gt=0)
    max_texts_per_document: int = Field(default=10_000, gt=0)
    raw_chars_in_rejects: int = Field(default=2_000, ge=0)


class DemoCorpusConfig(Section):
    """The small interleaved corpus that realsyn generates for local runs and tests."""

    output: str = "./lakehouse/raw/demo"
    documents: int = Field(default=300, gt=0)
    synthetic_images: int = Field(default=60, ge=0)
    seed: int = 0


class Config(Section):
    """The whole configuration of one environment."""

    storage: StorageConfig
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[leaf] = value


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    got = error.get("input")
    shown = "" if error["type"] in {"missing", "value_error"} or isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read ``path``, apply ``key=value`` overrides and validate; raise ConfigError naming file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    overridden: set[str] = set()
    for item in overrides or []:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. ingest.max_text_chars=5000")
        _set_dotted(raw, dotted.strip(), yaml.safe_load(text))
        overridden.add(dotted.strip())
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            origin = f"--set {key} over {path}" if key in overridden else str(path)
            lines.append(f"{origin}: {_describe(err)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
