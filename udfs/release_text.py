"""Texts written as the published RealSyn release writes them, so that realsyn output mixes with it.

The release's realistic texts (text1..text3) are lower-cased and word-tokenised, the tokens joined by single spaces
(``it 's``, ``good - bye``, ``" edu - tainment "``, a space before the final period); its synthetic texts are
lower-cased only (as seen in the release's own WebDataset check notebook, deepglint/RealSyn). The tokens here are
spaCy's rule-based English tokenizer (no model: ``spacy.blank("en")``), which splits clitics, infix hyphens,
brackets, quotes and final punctuation the same way.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from udfs.models import cached


def _tokenizer() -> Any:
    def load() -> Any:
        import spacy

        return spacy.blank("en").tokenizer

    return cached(("spacy-tokenizer", "en"), load)


def realistic(text: str | None) -> str | None:
    """A realistic text as the release writes it: lower-cased, tokens joined by single spaces."""
    if text is None:
        return None
    return " ".join(token.text for token in _tokenizer()(text.lower()) if not token.is_space)


def synthetic(text: str | None) -> str | None:
    """A synthetic text as the release writes it: lower-cased."""
    return None if text is None else text.lower()


def realistic_series(texts: pd.Series) -> pd.Series:
    """:func:`realistic` over a batch (nulls stay null)."""
    return pd.Series([realistic(t) for t in texts], index=texts.index, dtype=object)
