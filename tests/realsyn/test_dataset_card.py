"""The dataset card's text from known facts (no Spark): metadata Hugging Face reads, and what the card says."""

from __future__ import annotations

import pytest
import yaml

from realsyn.dataset_card import CardFacts, ModelUsed, card, size_category

FACTS = CardFacts(
    scales={"all": 1_200, "cap3": 27},
    funnel=[("ingest", "documents", 300, 300), ("balance", "scale[cap3]", 47, 27)],
    models=[
        ModelUsed("image and text encoder", "tiny-random", None, None, random_init=True),
        ModelUsed("llm", "llama-3-8b-instruct", "meta-llama/Meta-Llama-3-8B-Instruct", "abc123"),
    ],
    prompt_versions=["v1"],
    balance={"selection": "random", "scales": {"cap3": {"cap": 3}}},
    sources=[("demo", "mmc4", 150), ("demo|x", "obelics", 150)],
)


@pytest.mark.parametrize(
    ("rows", "category"),
    [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"), (99_999, "10K<n<100K"), (15_000_000, "10M<n<100M")],
)
def test_size_category_follows_the_hubs_bounds(rows: int, category: str) -> None:
    assert size_category(rows) == category


def test_front_matter_names_each_scales_parquet_files() -> None:
    text = card(FACTS)
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["configs"] == [
        {"config_name": "all", "data_files": "all/parquet/*.parquet", "default": True},
        {"config_name": "cap3", "data_files": "cap3/parquet/*.parquet"},
    ]
    assert meta["size_categories"] == ["1K<n<10K"]  # the largest scale, 1,200 rows
    assert meta["license"] == "other" and "image-to-text" in meta["task_categories"]


def test_the_body_says_what_made_the_data() -> None:
    text = card(FACTS)
    assert "| cap3 | 27 | `cap3/parquet/*.parquet` |" in text
    assert "| balance | scale[cap3] | 47 | 27 |" in text
    assert "| llm | llama-3-8b-instruct | meta-llama/Meta-Llama-3-8B-Instruct | abc123 |  |" in text
    assert "Prompt version: v1." in text
    assert "| demo\\|x | obelics | 150 |" in text  # a pipe in a cell is escaped
    assert "random weights: `tiny-random` (image and text encoder)" in text
    assert yaml.safe_load(text.split("```yaml\n")[1].split("```")[0]) == FACTS.balance


def test_real_models_are_not_called_random() -> None:
    real = CardFacts(**{**FACTS.__dict__, "models": [FACTS.models[1]]})
    assert "random weights" not in card(real)
