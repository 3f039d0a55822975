"""The tagger's vocabulary: base tags with their sentence counts and the most frequent mined ones."""

from __future__ import annotations

from realsyn.config_sections import GenerateConfig, GenerateTagsConfig
from realsyn.tables import Lakehouse
from realsyn.tag_vocabulary import tag_vocabulary

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
