"""Zero-shot image tagging with a CLIP model over a tag vocabulary, and mining tags from sentences.

Pure functions over pandas / numpy; no Spark here. The vocabulary is a base list shipped with the package
(RAM's 4,585 tags, Apache-2.0, realsyn/data/) plus nouns and noun phrases mined from the corpus sentences
(spaCy noun chunks, lemmatised; the Spark stage counts them by document frequency). Every tag is embedded once by
the CLIP text tower through a prompt ("a photo of {tag}."), and an image's tags are read off its stored CLIP
image embedding: no second pass over pixels.

Which tags an image gets: the cosine of the image with every tag, standardised over the vocabulary for that
image (z = (cosine - mean) / std); tags with z >= ``min_z`` and cosine >= ``min_cosine``, best ``top_t`` first.
The z-score needs no labelled calibration set and carries over between CLIP models whose cosines sit at
different offsets and spreads (docs/generation.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from udfs.models import load_spacy

# Parts of speech a mined phrase may hold before its head noun; determiners, numbers and pronouns are dropped.
_MODIFIERS = {"ADJ", "NOUN", "PROPN"}
MAX_PHRASE_WORDS = 3


def base_tags() -> list[str]:
    """The base tag list shipped in the package (RAM's tag list; its licence is realsyn/data/NOTICE)."""
    text = resources.files("realsyn").joinpath("data", "ram_tags.txt").read_text(encoding="utf-8")
    seen: set[str] = set()
    tags: list[str] = []
    for line in text.splitlines():
        tag = normalise_tag(line)
        if tag and tag not in seen:
            seen.add(tag)
            tags.append(tag)
    return tags


def normalise_tag(tag: str) -> str:
    """A tag as it is compared and stored: lower case, single spaces."""
    return " ".join(tag.lower().split())


def doc_phrases(doc: Any) -> list[str]:
    """The distinct tags one parsed sentence holds: every common-noun lemma, and each noun chunk's adjectives and
    nouns right before its head (at most MAX_PHRASE_WORDS words, head lemmatised), in order of first appearance."""
    found: dict[str, None] = {}
    for tok in doc:
        if tok.pos_ == "NOUN" and tok.is_alpha and not tok.is_stop:
            found.setdefault(tok.lemma_.lower(), None)
    for chunk in doc.noun_chunks:
        root = chunk.root
        if root.pos_ != "NOUN" or not root.is_alpha:
            continue
        words: list[str] = []
        j = root.i - 1
        while j >= chunk.start and len(words) < MAX_PHRASE_WORDS - 1:
            t = doc[j]
            if t.pos_ not in _MODIFIERS or not t.is_alpha or t.is_stop:
                break
            words.insert(0, t.text.lower())
            j -= 1
        if words:
            found.setdefault(" ".join([*words, root.lemma_.lower()]), None)
    return list(found)


def mine_phrases(texts: Iterable[str], parser: str, batch_size: int = 256) -> list[list[str]]:
    """The tags of each text (see :func:`doc_phrases`), parsed with the spaCy pipeline ``parser``."""
    nlp = load_spacy(parser)  # tagger, parser and lemmatizer (no NER), once per process
    return [doc_phrases(doc) for doc in nlp.pipe((str(t) for t in texts), batch_size=batch_size)]


@dataclass(frozen=True)
class TagChoice:
    """The tags of one image: indexes into the vocabulary, best first, with their cosines."""

    indexes: list[int]
    cosines: list[float]


def top_tags(
    images: np.ndarray, tags: np.ndarray, top_t: int, min_z: float, min_cosine: float = -1.0
) -> list[TagChoice]:
    """For each L2-normalised image vector (rows of ``images``), the at most ``top_t`` tags of the L2-normalised
    ``tags`` whose cosine is >= ``min_cosine`` and whose z-score over the vocabulary for that image is >= ``min_z``;
    best cosine first, ties to the lower index. An image may get no tag."""
    if len(images) == 0:
        return []
    if tags.shape[0] == 0:
        return [TagChoice([], []) for _ in range(len(images))]
    cos = np.asarray(images, dtype=np.float32) @ np.asarray(tags, dtype=np.float32).T
    mean = cos.mean(axis=1, keepdims=True)
    std = cos.std(axis=1, keepdims=True)
    z = np.where(std > 0, (cos - mean) / np.where(std > 0, std, 1.0), 0.0)
    ok = (z >= min_z) & (cos >= min_cosine)
    choices: list[TagChoice] = []
    for row in range(cos.shape[0]):
        candidates = np.flatnonzero(ok[row])
        order = candidates[np.lexsort((candidates, -cos[row, candidates]))][:top_t]
        choices.append(TagChoice([int(i) for i in order], [float(cos[row, i]) for i in order]))
    return choices


def tag_prompts(tags: Iterable[str], template: str) -> list[str]:
    """The texts the CLIP text tower embeds for ``tags`` (``template`` holds ``{tag}``)."""
    return [template.format(tag=t) for t in tags]
