"""The tagger's vocabulary: base tags with their sentence counts and the most frequent mined ones."""

from __future__ import annotations

from collections import Counter

from realsyn.config_sections import GenerateConfig, GenerateTagsConfig
from realsyn.contracts import SILVER_SENTENCE_PHRASES
from realsyn.tables import Lakehouse
from realsyn.tag_vocabulary import tag_vocabulary
from udfs.tagger import mine_phrases

# Also the sentences of tests/realsyn/stages/test_generate.py.
SENTENCES = {
    "s1": "A farmer drives a tractor across the field.",
    "s2": "The tractor stops near the river.",
    "s3": "A festival crowd gathers by the river.",
    "s4": "The farmer sleeps.",
    "s5": "A red tractor crosses the bridge.",
    "s6": "People in the festival crowd cheered loudly.",
}


def test_mined_vocabulary_counts_sentences_and_drops_base_duplicates(lakehouse: Lakehouse) -> None:
    sentences = lakehouse.spark.createDataFrame(list(SENTENCES.items()), "sentence_id string, text string")
    cfg = GenerateConfig(tags=GenerateTagsConfig(mined_top_n=2, min_document_frequency=1))
    rows = {(r.tag, r.source, r.frequency) for r in tag_vocabulary(sentences, cfg).collect()}
    # The single nouns but 'people' are RAM base tags: they stay base rows with their frequency, never mined rows;
    # of the two mined tags held by one sentence, the smaller wins the tie.
    assert {r for r in rows if r[1] == "mined"} == {("festival crowd", "mined", 2), ("people", "mined", 1)}
    assert {("tractor", "base", 3), ("farmer", "base", 2), ("abacus", "base", 0)} <= rows
    strict = GenerateConfig(tags=GenerateTagsConfig(base=False, mined_top_n=5, min_document_frequency=2))
    assert {(r.tag, r.source, r.frequency) for r in tag_vocabulary(sentences, strict).collect()} == {
        ("tractor", "mined", 3),
        ("crowd", "mined", 2),
        ("farmer", "mined", 2),
        ("festival", "mined", 2),
        ("festival crowd", "mined", 2),
    }


def test_stored_phrases_of_the_same_parser_are_read_and_the_other_sentences_parsed(lakehouse: Lakehouse) -> None:
    spark = lakehouse.spark
    sentences = spark.createDataFrame(list(SENTENCES.items()), "sentence_id string, text string")
    parser = GenerateTagsConfig().parser
    # s1's stored phrases are not what parsing it gives, so the counts show which of the two was used; s5's are by
    # another parser and "gone" is no longer a sentence: neither counts.
    stored = spark.createDataFrame(
        [("s1", parser, ["zebra crossing"]), ("s5", "another_parser", ["unicorn"]), ("gone", parser, ["ghost"])],
        SILVER_SENTENCE_PHRASES.schema,
    )
    cfg = GenerateConfig(tags=GenerateTagsConfig(base=False, mined_top_n=100, min_document_frequency=1))
    got = {(r.tag, r.frequency) for r in tag_vocabulary(sentences, cfg, stored).collect()}
    parsed = mine_phrases([text for key, text in SENTENCES.items() if key != "s1"], parser)
    expected = Counter(tag for found in parsed for tag in found) + Counter({"zebra crossing": 1})
    assert got == set(expected.items())
    assert ("tractor", 2) in got  # s2 and s5; s1's tractor was not parsed
