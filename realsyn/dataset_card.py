"""The dataset card written beside the exports: a ``README.md`` in the Hugging Face dataset-card format.

YAML front matter (license, task categories, size category, and a ``configs`` block naming each exported scale's
parquet files, so that ``datasets.load_dataset(<export folder>, name=<scale>)`` reads a scale), then what made the
data: the rows per scale, the funnel, the models with their registry sources and revisions, the prompt version, the
balance settings, the source documents, and the known limitations. Pure text from facts the export stage gathers;
no Spark here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# Hugging Face's size categories, by the largest scale.
SIZE_CATEGORIES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
TASK_CATEGORIES = ("zero-shot-image-classification", "image-to-text", "text-to-image")


@dataclass(frozen=True)
class ModelUsed:
    """A model that made the texts: its role, its registry name and where its weights come from."""

    role: str
    name: str
    source: str | None = None
    revision: str | None = None
    random_init: bool = False


@dataclass(frozen=True)
class CardFacts:
    """What the card says, gathered from the tables and the config by the export stage."""

    scales: Mapping[str, int]  # exported scale -> rows; its parquet files are <scale>/parquet/*.parquet
    funnel: Sequence[tuple[str, str, int, int]]  # (stage, step, rows in, rows out), in pipeline order
    models: Sequence[ModelUsed]
    prompt_versions: Sequence[str]
    balance: Mapping[str, Any]
    sources: Sequence[tuple[str, str, int]]  # (source, layout, documents)
    release_texts: bool = False
    notes: Sequence[str] = field(default_factory=tuple)


def size_category(rows: int) -> str:
    """The Hugging Face size category of ``rows`` examples."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


def front_matter(facts: CardFacts) -> dict[str, Any]:
    """The card's YAML metadata."""
    configs = [
        {"config_name": name, "data_files": f"{name}/parquet/*.parquet", **({"default": True} if i == 0 else {})}
        for i, name in enumerate(facts.scales)
    ]
    return {
        "license": "other",
        "license_name": "per-source",
        "license_details": "Texts and images come from crawled web pages under their own terms (see Sources).",
        "task_categories": list(TASK_CATEGORIES),
        "language": ["en"],
        "size_categories": [size_category(max(facts.scales.values(), default=0))],
        "pretty_name": "realsyn image-text dataset",
        "tags": ["realsyn", "clip", "image-text"],
        "configs": configs,
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


def card(facts: CardFacts) -> str:
    """The whole ``README.md``."""
    random = [m for m in facts.models if m.random_init]
    lines = ["---", yaml.safe_dump(front_matter(facts), sort_keys=False).rstrip(), "---", ""]
    lines += [
        "# realsyn image-text dataset",
        "",
        "Images from interleaved web documents, each paired with three realistic texts retrieved from the whole "
        "corpus (`text1`..`text3`, best first) and one synthetic text (`syn_text`), in the columns of the RealSyn "
        "release (`raw_image_url, text1, text2, text3, syn_text`); built by realsyn.",
        "",
        "## Scales",
        "",
        *_table(("config", "rows", "files"), [(n, r, f"`{n}/parquet/*.parquet`") for n, r in facts.scales.items()]),
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("<this folder>", name="{next(iter(facts.scales), "all")}", split="train")',
        "```",
        "",
        "## How it was made (gold.funnel)",
        "",
        *_table(("stage", "step", "in", "out"), list(facts.funnel)),
        "",
        "## Models",
        "",
        *_table(
            ("role", "registry name", "source", "revision", "weights"),
            [
                (m.role, m.name, m.source or "", m.revision or "", "random (tests / demo)" if m.random_init else "")
                for m in facts.models
            ],
        ),
        "",
        f"Prompt version: {', '.join(facts.prompt_versions) or 'none'}."
        + (" Texts written as the release writes them (lower-cased, word-tokenised)." if facts.release_texts else ""),
        "",
        "## Balance settings",
        "",
        "```yaml",
        yaml.safe_dump(dict(facts.balance), sort_keys=False).rstrip(),
        "```",
        "",
        "## Sources",
        "",
        *_table(("source", "layout", "documents"), list(facts.sources)),
        "",
        "The pages' own terms apply to their texts and images; the source dumps (OBELICS, MMC4) carry no per-page "
        "license field, and none was ingested.",
        "",
        "## Limitations",
        "",
    ]
    limits = list(facts.notes)
    if random:
        names = ", ".join(f"`{m.name}` ({m.role})" for m in random)
        limits.insert(0, f"Made with models with random weights: {names}. Their texts, tags and clusters are "
                         "meaningless as data; this export only shows that the pipeline ran end to end.")  # fmt: skip
    limits.append("Images are referenced by URL (`raw_image_url`) and may disappear from the web.")
    lines += [f"- {n}" for n in limits]
    return "\n".join(lines) + "\n"
