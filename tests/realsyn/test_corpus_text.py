"""Sentences of the generated corpus: real words at Zipf-like frequencies, and each kind meets or fails the
pipeline's sentence filters (udfs.sentences) as it is meant to."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from realsyn.config_sections import ExtractSentencesConfig
from realsyn.corpus_text import NEAR_MIN_JACCARD, SentenceMaker, Vocabulary, build_vocabulary
from udfs import sentences as S

PARSER = ExtractSentencesConfig().cat.parser


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return build_vocabulary(PARSER)


def cat_kept(texts: list[str]) -> pd.Series:
    """Whether the CAT filter of the default config keeps each text."""
    cat = ExtractSentencesConfig().cat
    features = S.cat_features(pd.Series(texts), PARSER)
    return (features["complexity"] >= cat.min_complexity) & features["has_action"]


def test_vocabulary_is_real_words_with_regular_forms_known_to_wordfreq(vocabulary: Vocabulary) -> None:
    import wordfreq

    assert len(vocabulary.nouns) > 2000 and len(vocabulary.verbs) > 500 and len(vocabulary.adjectives) > 1000
    for cls, names in ((vocabulary.nouns, ["plural"]), (vocabulary.verbs, ["s", "ed"])):
        assert list(cls.cum_weights) == sorted(cls.cum_weights)
        for i in range(0, len(cls), 97):
            assert wordfreq.zipf_frequency(cls.words[i], "en") > 0
            for name in names:
                form = cls.forms[name][i]
                assert form == "" or (form != cls.words[i] and wordfreq.zipf_frequency(form, "en") > 0)
    assert vocabulary.nouns.forms["plural"][vocabulary.nouns.words.index("city")] == "cities"
    assert build_vocabulary(PARSER) is vocabulary


def test_word_frequencies_of_the_text_are_zipf_like(vocabulary: Vocabulary) -> None:
    maker = SentenceMaker(vocabulary, random.Random(0))
    counts = Counter(w for _ in range(3000) for w in S.words(maker.normal()))
    freq = np.array(sorted(counts.values(), reverse=True), dtype=float)
    ranks = np.arange(1, len(freq) + 1)
    # The slope of log frequency over log rank, between rank 10 and the words seen at least 3 times.
    top = int(np.searchsorted(-freq, -3.0))
    slope = np.polyfit(np.log(ranks[10:top]), np.log(freq[10:top]), 1)[0]
    assert -1.4 < slope < -0.6, slope
    assert len(counts) > 3000


def test_same_seed_same_sentences_and_lengths_of_web_text(vocabulary: Vocabulary) -> None:
    first = [SentenceMaker(vocabulary, random.Random(7)).normal() for _ in range(3)]
    a, b = SentenceMaker(vocabulary, random.Random(7)), SentenceMaker(vocabulary, random.Random(7))
    sentences = [a.normal() for _ in range(500)]
    assert sentences == [b.normal() for _ in range(500)]
    assert first != [SentenceMaker(vocabulary, random.Random(8)).normal() for _ in range(3)]
    assert len(set(sentences)) == len(sentences)
    lengths = [S.count_words(s) for s in sentences]
    assert 15 <= statistics.median(lengths) <= 19 and min(lengths) >= 6 and max(lengths) <= 81


def test_each_kind_meets_or_fails_the_filters_as_planted(vocabulary: Vocabulary) -> None:
    maker = SentenceMaker(vocabulary, random.Random(3))
    site = maker.site()
    normal = [maker.normal() for _ in range(200)]
    for s in normal:
        maker.remember(s)
    near = [n for n in (maker.near_duplicate() for _ in range(60)) if n is not None]
    boilerplate = [line for _ in range(15) for line in maker.site().boilerplate]
    assert len(near) > 50

    for text in normal + near + boilerplate:
        assert not S.has_emoji(text) and not S.has_url(text) and 3 <= S.count_words(text) <= 81, text
    assert all(S.has_emoji(maker.emoji()) for _ in range(50))
    assert all(S.has_url(maker.url(site)) and not S.has_emoji(maker.url(site)) for _ in range(50))
    assert all(S.count_words(maker.too_short()) < 3 for _ in range(50))
    assert all(S.count_words(maker.too_long()) > 81 for _ in range(20))
    assert cat_kept(normal + near + boilerplate).mean() >= 0.97
    no_verb = [maker.no_verb() for _ in range(200)]
    assert all(S.count_words(t) >= 3 for t in no_verb)
    assert cat_kept(no_verb).mean() <= 0.03

    sources = set(normal)
    for text in near:
        assert text not in sources
        similar = [s for s in sources if len(s.split()) == len(text.split())]
        best = max(S.jaccard(S.shingles(text), S.shingles(s)) for s in similar)
        assert best >= NEAR_MIN_JACCARD
