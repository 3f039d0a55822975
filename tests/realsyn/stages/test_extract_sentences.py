"""Sentence extraction stage: planted filter cases and duplicates, perplexity in Spark, real MMC4 end to end.

Perplexity here comes from tiny GPT-2 models built from configs (random or all-zero weights) with a word-level
tokenizer trained in the test: no weights can be downloaded, and the scores say nothing about language quality.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from realsyn.config_sections import (
    Config,
    EmbedConfig,
    ExtractSentencesConfig,
    IngestConfig,
    IngestInput,
    SentencePerplexityConfig,
    StorageConfig,
)
from realsyn.contracts import (
    BRONZE_TEXTS,
    FUNNEL,
    SILVER_SENTENCE_PHRASES,
    SILVER_SENTENCE_REJECTS,
    SILVER_SENTENCES,
)
from realsyn.ids import stable_id
from realsyn.stages.extract_sentences import (
    STAGE,
    add_perplexity,
    add_word_entropy,
    band_buckets,
    perplexity_reason,
    run_extract_sentences,
    score_perplexity,
    word_counts,
)
from realsyn.stages.ingest import run_ingest
from realsyn.tables import Lakehouse
from tests.support.tasks import FakeTask
from udfs.sentences import split_sentences
from udfs.tagger import mine_phrases

NO_LM = SentencePerplexityConfig(enabled=False)


def _tiny_lm(path: Path, zero: bool) -> Path:
    """A 1-layer GPT-2 (random, or all-zero = uniform over the vocabulary) with a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["a man is riding a red bicycle down the street", "the dog sleeps on the beach in the park"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(fast), n_positions=160, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
        )
    )
    if zero:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


BIKE = "A man is riding a red bicycle down the street."
CHILDREN = "Two children are playing soccer in a sunny park near the old church."
YOUNG = "Two young children are playing soccer in a sunny park near the old church."
WOMAN = "A woman is reading a thick book in the quiet library."
BOILER = "The man rides the bike."
GO = " ".join(["go"] * 82)


def test_filters_exact_and_near_dedup(lakehouse: Lakehouse, storage: StorageConfig) -> None:
    spark = lakehouse.spark
    texts = [
        ("d1", 0, f"{BIKE} A black dog runs on the beach 🐶. Read more at www.example.com today. Hello there."),
        ("d1", 1, f"The weather is nice. The dog sleeps. {GO}"),
        ("d2", 0, f"{BIKE} {CHILDREN}"),
        ("d2", 1, "A man   is riding a red\nbicycle down the street."),
        ("d3", 0, f"{CHILDREN} {YOUNG}"),
        ("d3", 1, WOMAN),
        ("boiler", 0, " ".join([BOILER] * 100)),
        ("d4", 0, "   "),
    ]
    lakehouse.overwrite(BRONZE_TEXTS, spark.createDataFrame(texts, "doc_id string, position int, text string"))
    cfg = Config(storage=storage, extract_sentences=ExtractSentencesConfig(perplexity=NO_LM))

    run_extract_sentences(lakehouse, cfg)

    sid = stable_id
    assertDataFrameEqual(
        lakehouse.read(SILVER_SENTENCES),
        [
            Row(sentence_id=sid(BIKE), text=BIKE, doc_ids=["d1", "d2"], n_occurrences=3),
            # The near duplicate YOUNG (1 occurrence) is merged into CHILDREN (2 occurrences).
            Row(sentence_id=sid(CHILDREN), text=CHILDREN, doc_ids=["d2", "d3"], n_occurrences=3),
            Row(sentence_id=sid(WOMAN), text=WOMAN, doc_ids=["d3"], n_occurrences=1),
        ],
    )
    # The CAT parse's nouns and noun phrases of each kept sentence (not of YOUNG, parsed but merged away): what the
    # tagger would have parsed them into.
    parser = cfg.extract_sentences.cat.parser
    stored = {r.sentence_id: (r.parser, r.phrases) for r in lakehouse.read(SILVER_SENTENCE_PHRASES).collect()}
    assert stored == {sid(t): (parser, mine_phrases([t], parser)[0]) for t in (BIKE, CHILDREN, WOMAN)}
    assert "bicycle" in stored[sid(BIKE)][1]

    def reject(text: str, docs: list[str], n: int, step: str, reason: str, dup: str | None = None) -> Row:
        return Row(
            sentence_id=sid(text),
            text=text,
            doc_ids=docs,
            n_occurrences=n,
            step=step,
            reason=reason,
            duplicate_of=dup,
        )

    rejects = lakehouse.read(SILVER_SENTENCE_REJECTS)
    # The detail says what the filter measured: word counts, the parse, the entropy (threshold 0.3).
    details = {r.text: r.detail for r in rejects.collect()}
    assert details["Hello there."] == "2 words" and details[GO] == "82 words"
    assert details["The dog sleeps."] == "complexity 0, action true"
    assert re.fullmatch(r"complexity [1-9][0-9]*, action false", details["The weather is nice."])
    assert re.fullmatch(r"word entropy 0\.2[0-9]{2}", details[BOILER])
    assert [
        details[t] for t in ("A black dog runs on the beach 🐶.", "Read more at www.example.com today.", YOUNG)
    ] == [None] * 3
    assertDataFrameEqual(
        rejects.drop("detail"),
        [
            reject("A black dog runs on the beach 🐶.", ["d1"], 1, "emoji", "emoji"),
            reject("Read more at www.example.com today.", ["d1"], 1, "url", "url"),
            reject("Hello there.", ["d1"], 1, "word_count", "too_few_words"),
            reject(GO, ["d1"], 1, "word_count", "too_many_words"),
            reject("The weather is nice.", ["d1"], 1, "cat", "no_action"),
            reject("The dog sleeps.", ["d1"], 1, "cat", "low_complexity"),
            # 100 copies make its words the corpus' most frequent: mean surprisal ~0.23 of the maximum.
            reject(BOILER, ["boiler"], 100, "word_entropy", "low_word_entropy"),
            reject(YOUNG, ["d3"], 1, "near_dedup", "near_duplicate", sid(CHILDREN)),
        ],
    )
    # 4 + 3 + 2 + 1 + 2 + 1 + 100 sentence occurrences; the whitespace-only text has none.
    assertDataFrameEqual(
        lakehouse.read(FUNNEL).where(F.col("stage") == STAGE),
        spark.createDataFrame(
            [
                (STAGE, None, None, None, None, i, step, rows_in, rows_out, rows_in - rows_out)
                for i, (step, rows_in, rows_out) in enumerate(
                    [
                        ("empty", 113, 113),
                        ("emoji", 113, 112),
                        ("url", 112, 111),
                        ("word_count", 111, 109),
                        ("cat", 109, 107),
                        ("word_entropy", 107, 7),
                        ("perplexity", 7, 7),
                        ("exact_dedup", 7, 4),
                        ("near_dedup", 4, 3),
                    ]
                )
            ],
            FUNNEL.schema,
        ),
    )


def test_perplexity_filter_in_spark(spark: SparkSession, tmp_path: Path) -> None:
    model = _tiny_lm(tmp_path / "uniform", zero=True)
    vocab = len(json.loads((model / "tokenizer.json").read_text())["model"]["vocab"])
    df = spark.createDataFrame([("a", "the dog sleeps"), ("b", "a man is riding")], "sentence_id string, text string")
    cfg = SentencePerplexityConfig(model=str(model), min=1.0, max=vocab - 0.5, batch_size=1)
    out = add_perplexity(df, cfg).withColumn("reason", perplexity_reason(cfg))
    # An all-zero model is uniform: every token has probability 1/V, so perplexity is exactly V.
    assertDataFrameEqual(
        out.select("sentence_id", F.round("perplexity", 6).alias("p"), "reason"),
        [
            Row(sentence_id="a", p=float(vocab), reason="perplexity_too_high"),
            Row(sentence_id="b", p=float(vocab), reason="perplexity_too_high"),
        ],
    )


@pytest.mark.parametrize(
    ("address", "visible", "device"),
    [
        ("3", "3", "cuda:0"),  # YARN / Kubernetes isolation: the process sees its one GPU as cuda:0
        ("3", "1,3", "cuda:1"),  # the assigned GPU is the second one this process sees
        ("1", None, "cuda:1"),  # no isolation: Spark's address is the torch index
    ],
)
def test_perplexity_runs_on_the_assigned_gpu_as_seen_through_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, address: str, visible: str | None, device: str
) -> None:
    import pandas as pd
    import torch
    from pyspark import TaskContext

    import udfs.sentences
    from realsyn.workers import task_device

    monkeypatch.setattr(TaskContext, "get", staticmethod(lambda: FakeTask(address)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    devices: list[str] = []

    def scored_on(texts: pd.Series, model: str, on: str, batch_size: int, max_tokens: int) -> pd.Series:
        devices.append(on)
        return pd.Series(50.0, index=texts.index)

    monkeypatch.setattr(udfs.sentences, "perplexity_batch", scored_on)
    batches = [pd.Series(["a dog runs"]), pd.Series(["the cat sleeps", "a man rides"])]
    out = list(score_perplexity(iter(batches), SentencePerplexityConfig(model="gpt2-large")))
    assert [o.tolist() for o in out] == [[50.0], [50.0, 50.0]]
    # The device of the embed stage (and every other model stage) for the same task, and the expected index.
    assert devices == [device, device] == [task_device(EmbedConfig().device)] * 2


def test_perplexity_device_cuda_without_a_gpu_names_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        RuntimeError, match=r"^extract_sentences\.perplexity\.device: device is 'cuda' but no CUDA device"
    ):
        next(score_perplexity(iter([]), SentencePerplexityConfig(device="cuda")))


def test_mmc4_end_to_end_reconciles(
    lakehouse: Lakehouse, storage: StorageConfig, mmc4_path: Path, tmp_path: Path
) -> None:
    model = _tiny_lm(tmp_path / "random", zero=False)
    cfg = Config(
        storage=storage,
        ingest=IngestConfig(inputs=[IngestInput(path=str(mmc4_path), layout="mmc4", source="mmc4-sample")]),
        # Random weights score every sentence near the vocabulary size; the wide window keeps the rest of the
        # pipeline fed while the perplexity step still runs on every sentence.
        extract_sentences=ExtractSentencesConfig(
            perplexity=SentencePerplexityConfig(model=str(model), min=1.0, max=1e6, batch_size=64)
        ),
    )
    run_ingest(lakehouse, cfg)
    summary = run_extract_sentences(lakehouse, cfg)

    # Occurrences counted independently of Spark: every text of the input file, split in this process.
    expected_occurrences = 0
    with mmc4_path.open(encoding="utf-8") as f:
        for line in f:
            expected_occurrences += sum(len(split_sentences(t)) for t in json.loads(line)["text_list"])
    steps = {s.step: s for s in summary.steps}
    assert steps["empty"].rows_in == expected_occurrences

    sentences = lakehouse.read(SILVER_SENTENCES)
    rejects = lakehouse.read(SILVER_SENTENCE_REJECTS)
    by_step = {
        r["step"]: (r["n"], r["occ"])
        for r in rejects.groupBy("step").agg(F.count("*").alias("n"), F.sum("n_occurrences").alias("occ")).collect()
    }
    # Every filter step: in = kept + rejected, the rejected being the occurrences of its reject rows.
    chained = expected_occurrences
    for step in ("empty", "emoji", "url", "word_count", "cat", "word_entropy", "perplexity"):
        assert steps[step].rows_in == chained
        assert steps[step].rows_rejected == by_step.get(step, (0, 0))[1]
        chained = steps[step].rows_out
    kept = sentences.agg(F.count("*").alias("n"), F.sum("n_occurrences").alias("occ")).first()
    assert kept is not None and kept["n"] > 0
    assert kept["occ"] == chained  # duplicates hand their occurrences to the sentence they are merged into
    assert steps["near_dedup"].rows_rejected == by_step.get("near_dedup", (0, 0))[0]
    assert steps["near_dedup"].rows_out == kept["n"] == summary.sentences
    # Keys are unique across kept and rejected sentences, and every reject has exactly one reason.
    ids = sentences.select("sentence_id").union(rejects.select("sentence_id"))
    assert ids.count() == ids.distinct().count()
    assert rejects.where(F.col("reason").isNull() | F.col("step").isNull()).count() == 0
    # The real sample hits the emoji, URL, word-count and CAT filters.
    assert all(by_step.get(s, (0, 0))[0] > 0 for s in ("emoji", "url", "word_count", "cat"))


CAT_ = "A cat sleeps on the warm sofa today."
KITTEN = "A kitten naps on the cosy couch today."
MARKET = "The stock market fell sharply this morning."
BEACH = "Children build a sandcastle at the beach."


def test_word_counts_and_entropy_count_every_occurrence(spark: SparkSession) -> None:
    rows = [("s1", ["the", "the", "the", "the", "cat"], 1), ("s2", ["the", "dog"], 1), ("s3", ["a", "rare", "word"], 2)]
    sentences = spark.createDataFrame(rows, "sentence_id string, words array<string>, n_occurrences long")
    counts = word_counts(sentences)
    # s3 occurs twice: its words count twice.
    assert dict(counts.collect()) == {"the": 5, "cat": 1, "dog": 1, "a": 2, "rare": 2, "word": 2}
    entropy = dict(add_word_entropy(sentences, counts, 13).select("sentence_id", "word_entropy").collect())
    log_total = math.log(13)
    expected = {
        "s1": (4 * (log_total - math.log(5)) + log_total) / 5 / log_total,
        "s2": ((log_total - math.log(5)) + log_total) / 2 / log_total,
        "s3": (log_total - math.log(2)) / log_total,
    }
    assert entropy == pytest.approx(expected)


def test_band_buckets_agree_exactly_where_a_bands_values_agree(spark: SparkSession) -> None:
    base = list(range(100, 112))  # 3 bands of 4 values
    rows = {
        "a": base,
        "b": [*base[:4], 0, 0, 0, 0, *base[8:]],  # bands 0 and 2 as a's
        "c": base[4:8] + base[:4] + base[8:],  # a's band 0 values in band 1, its band 1 values in band 0
        "d": [7] * 12,
    }
    values = spark.createDataFrame(list(rows.items()), "sentence_id string, h array<bigint>")
    got = {(r["sentence_id"], r["band"]): r["bucket"] for r in band_buckets(values, 3, 4).collect()}
    assert len(got) == 4 * 3
    for band in range(3):
        cut = slice(4 * band, 4 * band + 4)
        for x in rows:
            for y in rows:
                assert (got[x, band] == got[y, band]) == (rows[x][cut] == rows[y][cut]), (x, y, band)
    # A band's bucket holds its values' positions: the same values in another band are another bucket.
    assert got["c", 1] != got["a", 0] and got["d", 0] != got["d", 1]
