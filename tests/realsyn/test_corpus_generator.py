"""The generated corpus: the same bytes for a seed however many tasks write it, both layouts read by the ingest
readers, and the funnel of the pipeline's own filters (udfs.sentences, udfs.images, udfs.decode) on a small corpus
within a few points of the configured shares."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from realsyn import corpus_images
from realsyn.config_sections import (
    ExtractImagesConfig,
    ExtractSentencesConfig,
    GeneratedCorpusConfig,
    ImagePerceptualDedupConfig,
    IngestConfig,
)
from realsyn.corpus_generator import MANIFEST, generate_corpus, ingest_inputs, main
from realsyn.document_layouts import Limits, read_documents
from udfs import sentences as S
from udfs.decode import validate_image
from udfs.images import hamming, image_info, phash

TOLERANCE = 0.02


def corpus_files(folder: Path) -> dict[str, bytes]:
    """Every file of a corpus by relative path, its own folder written as ``<out>`` in the layout files (their
    image URIs name it) and the parquet files as the rows they hold."""
    out: dict[str, bytes] = {}
    prefix = folder.resolve().as_uri().encode()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "_spark.log"):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data = json.dumps(pq.read_table(path).to_pylist()).encode()
        out[str(path.relative_to(folder))] = data.replace(prefix, b"<out>")
    return out


def read_corpus(folder: Path) -> tuple[list[str], list[str]]:
    """(texts, image URIs) of every document of the corpus under ``folder``, read from its files."""
    texts: list[str] = []
    images: list[str] = []
    for path in sorted((folder / "mmc4").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            texts += doc["text_list"]
            images += [info["raw_url"] for info in doc["image_info"]]
    for path in sorted((folder / "obelics").glob("*.parquet")):
        for doc in pq.read_table(path).to_pylist():
            texts += [t for t in doc["texts"] if t is not None]
            images += [i for i in doc["images"] if i is not None]
    return texts, images


def test_same_seed_same_bytes_whatever_the_parallelism(spark: SparkSession, tmp_path: Path) -> None:
    cfg = GeneratedCorpusConfig(documents=12, documents_per_shard=4, characters_per_document=400, seed=5)
    in_process = generate_corpus(cfg, tmp_path / "a")
    by_spark = generate_corpus(cfg, tmp_path / "b", spark)
    assert in_process == json.loads((tmp_path / "a" / MANIFEST).read_text()) and in_process["shards"] == 3
    assert in_process["counts"] == by_spark["counts"]
    files = corpus_files(tmp_path / "a")
    assert files == corpus_files(tmp_path / "b")
    n_files = sum(name.startswith("images/") for name in files)
    assert n_files == sum(in_process["counts"].get(f"images.{k}", 0) for k in corpus_images.KINDS)

    # A shard depends on the seed and its number only: a smaller corpus has the same first shards.
    smaller = generate_corpus(cfg.model_copy(update={"documents": 8}), tmp_path / "c")
    assert smaller["shards"] == 2
    first_two = {k: v for k, v in files.items() if "00002" not in k and k != MANIFEST}
    assert first_two == {k: v for k, v in corpus_files(tmp_path / "c").items() if k != MANIFEST}
    other_seed = generate_corpus(cfg.model_copy(update={"seed": 6}), tmp_path / "a")
    assert other_seed["settings"]["seed"] == 6 and corpus_files(tmp_path / "a") != files

    # Both layouts, as the ingest stage reads them: every document parses, with its texts and images.
    limits = Limits(IngestConfig().max_texts_per_document, IngestConfig().max_images_per_document)
    _, uris = read_corpus(tmp_path / "b")
    n_images, n_texts = 0, 0
    for inp in ingest_inputs(tmp_path / "b"):
        docs = read_documents(spark, inp, limits)
        row = docs.agg(
            F.count("*").alias("documents"),
            F.count_if(F.col("parse_reason").isNotNull() | F.col("layout_reason").isNotNull()).alias("bad"),
            F.sum(F.size("texts")).alias("texts"),
            F.sum(F.size("images")).alias("images"),
        ).first()
        assert row is not None and row["bad"] == 0, inp
        assert row["documents"] == by_spark["counts"][f"documents.{inp.layout}"] == 6
        assert row["texts"] == by_spark["counts"][f"texts.{inp.layout}"]
        n_images += row["images"]
        n_texts += row["texts"]
    assert n_images == len(uris) and all(Path(u.removeprefix("file://")).is_file() for u in uris)


def test_finished_corpus_is_kept_and_the_command_line_writes_one(tmp_path: Path, capsys: Any) -> None:
    main(["--docs", "3", "--out", str(tmp_path), "--layout", "obelics", "--no-spark", "--set", "images.broken=0.5"])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["settings"]["images"]["broken"] == 0.5 and manifest["counts"]["documents.obelics"] == 3
    assert not (tmp_path / "mmc4").exists() and "3 documents" in capsys.readouterr().out
    shard = tmp_path / "obelics" / "shard_00000.parquet"
    stamp = shard.stat().st_mtime_ns
    cfg = GeneratedCorpusConfig.model_validate(
        {k: v for k, v in manifest["settings"].items() if k not in ("generator", "version")}
    )
    generate_corpus(cfg, tmp_path)
    assert shard.stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit) as exit_info:
        main(["--docs", "3", "--out", str(tmp_path), "--no-spark", "--set", "images.too_small=2"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# The funnel of the pipeline's filters on a generated corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[GeneratedCorpusConfig, Path, dict[str, Any]]:
    cfg = GeneratedCorpusConfig(documents=150, documents_per_shard=75, characters_per_document=1200, seed=11)
    folder = tmp_path_factory.mktemp("generated")
    return cfg, folder, generate_corpus(cfg, folder)


def components(n: int, pairs: list[tuple[int, int]]) -> int:
    """Number of connected components of ``n`` vertices joined by ``pairs``."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return len({find(i) for i in range(n)})


def test_sentence_funnel_of_the_filters_lands_on_the_configured_shares(
    corpus: tuple[GeneratedCorpusConfig, Path, dict[str, Any]],
) -> None:
    cfg, folder, manifest = corpus
    settings = ExtractSentencesConfig()
    texts, _ = read_corpus(folder)
    occurrences = Counter(s for t in texts for s in S.split_sentences(t, settings.language))
    total = sum(occurrences.values())
    planted = {k: manifest["counts"].get(f"sentences.{k}", 0) for k in ("normal", *cfg.sentences.model_dump())}
    assert total == sum(planted.values())  # Punkt finds exactly the sentences that were written

    dropped: Counter[str] = Counter()
    survivors = []
    for text, n in occurrences.items():
        words = S.count_words(text)
        reason = (
            "emoji"
            if S.has_emoji(text)
            else "url"
            if S.has_url(text)
            else "too_short"
            if words < settings.min_words
            else "too_long"
            if words > settings.max_words
            else None
        )
        if reason:
            dropped[reason] += n
        else:
            survivors.append(text)
    cat = S.cat_features(pd.Series(survivors), settings.cat.parser)
    kept_by_cat = (cat["complexity"] >= settings.cat.min_complexity) & cat["has_action"]
    dropped["no_verb"] = sum(occurrences[t] for t, k in zip(survivors, kept_by_cat, strict=True) if not k)
    counts: Counter[str] = Counter()
    for text, n in occurrences.items():
        for w in S.words(text):
            counts[w] += n
    n_words = sum(counts.values())
    survivors = [t for t, k in zip(survivors, kept_by_cat, strict=True) if k]
    entropy_kept = [t for t in survivors if S.word_entropy(S.words(t), counts, n_words) >= settings.min_word_entropy]
    dropped["word_entropy"] = sum(occurrences[t] for t in survivors) - sum(occurrences[t] for t in entropy_kept)
    dropped["exact_dedup"] = sum(occurrences[t] - 1 for t in entropy_kept)
    # Near duplicates: sentences of the same length that differ in one word, at the stage's Jaccard threshold.
    by_key: dict[tuple[str, ...], list[int]] = {}
    for i, text in enumerate(entropy_kept):
        tokens = text.split(" ")
        for j in range(len(tokens)):
            by_key.setdefault((*tokens[:j], "", *tokens[j + 1 :]), []).append(i)
    pairs = {
        (a, b)
        for group in by_key.values()
        for a, b in itertools.combinations(group, 2)
        if S.jaccard(S.shingles(entropy_kept[a]), S.shingles(entropy_kept[b])) >= settings.near_dedup.min_jaccard
    }
    dropped["near_dedup"] = len(entropy_kept) - components(len(entropy_kept), sorted(pairs))

    shares = {k: v / total for k, v in dropped.items()}
    expected = cfg.sentences
    for kind in ("emoji", "url", "too_short", "too_long", "no_verb"):
        assert shares[kind] == pytest.approx(getattr(expected, kind), abs=TOLERANCE), kind
    assert shares["word_entropy"] <= TOLERANCE
    assert shares["exact_dedup"] == pytest.approx(expected.boilerplate + expected.exact_copy, abs=TOLERANCE)
    first_lines = manifest["counts"]["sentences.boilerplate_distinct"]
    assert dropped["exact_dedup"] == pytest.approx(
        planted["boilerplate"] - first_lines + planted["exact_copy"], rel=0.05
    )
    assert shares["near_dedup"] == pytest.approx(expected.near_duplicate, abs=TOLERANCE)
    assert total > 1500


def test_image_funnel_of_the_filters_lands_on_the_configured_shares(
    corpus: tuple[GeneratedCorpusConfig, Path, dict[str, Any]],
) -> None:
    cfg, folder, manifest = corpus
    quality, max_distance = ExtractImagesConfig(), ImagePerceptualDedupConfig().max_distance
    _, uris = read_corpus(folder)
    assert len(set(uris)) == len(uris) > 300
    contents = [Path(u.removeprefix("file://")).read_bytes() for u in uris]
    fetched = [c for c in contents if validate_image(c).reason is None]
    dropped: Counter[str] = Counter(broken=len(contents) - len(fetched))
    passing = []
    for content in fetched:
        width, height, _ = image_info(content)
        assert width is not None and height is not None
        short, long = min(width, height), max(width, height)
        if short < quality.min_short_side:
            dropped["too_small"] += 1
        elif long > short * quality.max_aspect_ratio:
            dropped["aspect_ratio"] += 1
        else:
            passing.append(content)
    distinct = sorted({hashlib.sha256(c).hexdigest(): c for c in passing}.items())
    dropped["exact_duplicate"] = len(passing) - len(distinct)
    hashes = np.array([phash(c) for _, c in distinct], dtype=np.int64)
    near = np.argwhere(np.triu(hamming(hashes[:, None], hashes[None, :]) <= max_distance, 1))
    dropped["near_duplicate"] = len(distinct) - components(len(distinct), [(int(a), int(b)) for a, b in near])

    assert dropped["broken"] / len(contents) == pytest.approx(cfg.images.broken, abs=TOLERANCE)
    for kind in ("too_small", "aspect_ratio", "exact_duplicate", "near_duplicate"):
        assert dropped[kind] / len(fetched) == pytest.approx(getattr(cfg.images, kind), abs=TOLERANCE), kind
        assert dropped[kind] == manifest["counts"][f"images.{kind}"], kind
