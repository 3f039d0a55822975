"""CAT filter against hand-labelled sentences (tests/data/cat_labelled.tsv): precision and recall of the keep
decision (action and complexity >= 1), and of each half, with the parser of the config's default.

This measures quality, not speed; --quick is accepted (the set is small either way).
    PYTHONPATH=. .venv/bin/python bench/cat.py
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pandas as pd

from realsyn.config_sections import SentenceCatConfig
from udfs.sentences import cat_features

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "cat_labelled.tsv"


def load_labels(path: Path = LABELS) -> pd.DataFrame:
    """The labelled sentences: columns text, has_action, complex (bool)."""
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))
    return pd.DataFrame(
        {
            "text": [r["text"] for r in rows],
            "has_action": [r["has_action"] == "1" for r in rows],
            "complex": [r["complex"] == "1" for r in rows],
        }
    )


def precision_recall(truth: pd.Series, predicted: pd.Series) -> tuple[float, float]:
    """Precision and recall of boolean predictions."""
    tp = int((truth & predicted).sum())
    return tp / max(1, int(predicted.sum())), tp / max(1, int(truth.sum()))


def score(parser: str, min_complexity: int = 1) -> dict[str, tuple[float, float]]:
    """(precision, recall) of keep, action and complexity on the labelled set."""
    labels = load_labels()
    got = cat_features(labels["text"], parser)
    predicted_keep = got["has_action"] & (got["complexity"] >= min_complexity)
    return {
        "keep": precision_recall(labels["has_action"] & labels["complex"], predicted_keep),
        "action": precision_recall(labels["has_action"], got["has_action"]),
        "complexity": precision_recall(labels["complex"], got["complexity"] >= min_complexity),
    }


def main() -> None:
    """Print the figures; the keep decision's F1 last."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parser", default=SentenceCatConfig().parser)
    args = parser.parse_args()
    figures = score(args.parser)
    print(f"{len(load_labels())} labelled sentences, parser {args.parser}")
    for name, (p, r) in figures.items():
        print(f"{name:<11} precision {p:.3f}  recall {r:.3f}")
    p, r = figures["keep"]
    print(f"cat_keep_f1: {2 * p * r / max(1e-9, p + r):.3f}")


if __name__ == "__main__":
    main()
