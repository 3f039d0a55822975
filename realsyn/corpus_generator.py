"""A generated corpus of interleaved web documents, of any size, in the OBELICS (parquet) and MMC4 (jsonl) layouts as
the ingest stage reads them, with set shares of what each filter of the pipeline drops; written by Spark tasks, one
shard each, or in this process.

Documents follow the published shape of OBELICS (Laurençon et al. 2023, arXiv 2306.16527: 141M documents, 353M
images, 115B text tokens): 353 / 141 = 2.5 images and 115B / 141M = 816 tokens, about 2.9k characters, of text per
document on average. Images per document are 1 + a geometric count (every document has one, as in OBELICS and MMC4;
the real MMC4 sample in ../shared/data has 3.9 per document, median 3, at most 12); characters per document are
lognormal (sigma 0.7) around that mean, up to 40k. Text is made of the sentences of :mod:`realsyn.corpus_text`,
images are those of :mod:`realsyn.corpus_images`, written as files and referenced by ``file://`` URI (the fetch reads
them when the corpus folder is among ``fetch.file_roots``, as for the demo corpus).

Shares (:class:`realsyn.config_sections.GeneratedCorpusConfig`) are derived from the RealSyn funnel (arXiv
2502.12513, section 3.1):

* images 336M -> 285M after the quality filters -> 198M after dedup. Quality drops (336 - 285) / 336 = 15.2% of the
  images: ``too_small`` 10.1% and ``aspect_ratio`` 5.1% (the paper does not split them; icons and thumbnails are
  taken to be twice as common as banners). Dedup drops (285 - 198) / 336 = 25.9%: ``exact_duplicate`` (the same
  bytes under another URL) and ``near_duplicate`` (re-encoded, resized, cropped) 12.9% each, since locally the
  perceptual step stands for the paper's perceptual and semantic dedup. 198 / 336 = 58.9% are new pictures. These
  shares are of the images that decode; ``broken`` (1% of the URLs, our choice) comes on top, since the paper counts
  only images it downloaded.
* sentences 2.13B -> 1.82B after the emoji / URL / word-count filters -> 1.16B after CAT, word entropy and perplexity
  -> 0.84B after dedup, in sentence occurrences. The first step drops (2.13 - 1.82) / 2.13 = 14.6%, split as the 107
  real MMC4 documents of ../shared/data split theirs (6 emoji, 9 URL, 55 word count of 2,076 sentences): ``emoji``
  1.25%, ``url`` 1.87%, ``too_short`` 10.9% and ``too_long`` 0.5% (none in the sample; our choice). The second drops
  (1.82 - 1.16) / 2.13 = 31.0%, all as ``no_verb``: perplexity is off on one machine and the word-entropy filter
  depends on the corpus size (it is normalised by the log of the corpus's word count), so only CAT has a planted
  share. The third drops (1.16 - 0.84) / 2.13 = 15.0%: ``boilerplate`` 7.5% (a site's repeated lines; each line's
  first occurrence in a shard is kept by exact dedup, so a little less is dropped), ``exact_copy`` 3.8% and
  ``near_duplicate`` 3.8%. 0.84 / 2.13 = 39.4% are normal sentences.

Kinds are dealt from shuffled decks of 100 made up by the shares (:class:`KindDeck`), so even a small corpus has
them within a point; the manifest beside the corpus (``manifest.json``) counts what was planted, by kind. An exact
or near copy asked for before the shard has a source becomes a normal item.

Determinism: shard ``s`` holds documents ``[s * documents_per_shard, (s + 1) * documents_per_shard)`` and draws
everything from ``numpy.random.SeedSequence([seed, s])``, so a shard's files depend on the seed and the shard only:
the same corpus comes out of one process, of Spark tasks in any number, and of a task retried. Duplicates are made
within a shard. Files: ``images/<shard>/<name>.<ext>``, ``mmc4/shard_<shard>.jsonl`` and
``obelics/shard_<shard>.parquet`` (with layout ``both``, even documents in MMC4 and odd ones in OBELICS; a document's
content does not depend on its layout). The output folder must be one path for the driver and every executor (local
runs, or a shared file system on a cluster).

Command line::

    python -m realsyn.corpus_generator --docs 10000 --out lakehouse/raw/generated --layout both --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError

from realsyn import corpus_images, corpus_text
from realsyn.config_sections import GeneratedCorpusConfig, IngestInput, SparkConfig
from realsyn.corpus_images import ImageMaker, MadeImage
from realsyn.corpus_text import SentenceMaker, Site, Vocabulary, build_vocabulary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

MANIFEST = "manifest.json"
GENERATOR = "realsyn.corpus_generator"
# Bumped whenever the same settings would give other files.
VERSION = 1
FOLDERS = ("images", "mmc4", "obelics")
DOCUMENTS_PER_SITE = 25
CHARACTERS_SIGMA = 0.7
MAX_CHARACTERS = 40_000
MAX_IMAGES = 40
# Sentences per OBELICS paragraph: 1 + a geometric count with this mean.
EXTRA_SENTENCES_PER_PARAGRAPH = 2.0
OBELICS_SCHEMA = pa.schema(
    [
        ("images", pa.list_(pa.string())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
        ("texts", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class PlacedImage:
    """An image of a document: its kind, file name, ``file://`` URI, what was written, and its alt text."""

    kind: str
    name: str
    uri: str
    made: MadeImage
    alt_text: str


@dataclass(frozen=True)
class Document:
    """One generated document: its URL and site, its sentences ``(kind, text)`` in reading order, and its images
    with the index of the sentence each one stands before."""

    index: int
    url: str
    site: Site
    sentences: list[tuple[str, str]]
    images: list[tuple[int, PlacedImage]]


def shard_count(cfg: GeneratedCorpusConfig) -> int:
    """Number of shards of the corpus."""
    return math.ceil(cfg.documents / cfg.documents_per_shard)


def _seeds(cfg: GeneratedCorpusConfig, shard: int) -> list[np.random.SeedSequence]:
    """Independent streams of one shard: text, images, document structure, layout."""
    return np.random.SeedSequence([cfg.seed, shard]).spawn(4)


def _python_rng(seq: np.random.SeedSequence) -> random.Random:
    return random.Random(int.from_bytes(seq.generate_state(4, np.uint32).tobytes(), "little"))


def _geometric(rng: random.Random, mean: float) -> int:
    """A count >= 0 with the given mean (geometric: many small, a few large)."""
    if mean <= 0:
        return 0
    return int(math.log(1.0 - rng.random()) / math.log(mean / (1.0 + mean)))


class KindDeck:
    """Kinds dealt from shuffled decks of ``size`` whose make-up follows ``weights`` (largest remainder, rounding
    carried from deck to deck): a shard's shares stay within one deck of the settings, not a binomial spread."""

    def __init__(self, kinds: Sequence[str], weights: Sequence[float], rng: random.Random, size: int = 100) -> None:
        total = sum(weights)
        self.kinds, self.shares, self.rng, self.size = list(kinds), [w / total for w in weights], rng, size
        self.carry = [0.0] * len(self.kinds)
        self.deck: list[str] = []

    def next(self) -> str:
        """The next kind."""
        if not self.deck:
            wanted = [c + s * self.size for c, s in zip(self.carry, self.shares, strict=True)]
            counts = [math.floor(w) for w in wanted]
            by_remainder = sorted(range(len(wanted)), key=lambda i: (counts[i] - wanted[i], i))
            for i in by_remainder[: self.size - sum(counts)]:
                counts[i] += 1
            self.carry = [w - c for w, c in zip(wanted, counts, strict=True)]
            self.deck = [k for k, c in zip(self.kinds, counts, strict=True) for _ in range(c)]
            self.rng.shuffle(self.deck)
        return self.deck.pop()


class ShardGenerator:
    """Draws the documents of one shard, in order, and writes their image files under ``folder``."""

    def __init__(self, cfg: GeneratedCorpusConfig, shard: int, vocabulary: Vocabulary, folder: Path) -> None:
        text_seq, image_seq, structure_seq, layout_seq = _seeds(cfg, shard)
        self.cfg, self.shard, self.folder = cfg, shard, folder
        self.text = SentenceMaker(vocabulary, _python_rng(text_seq))
        self.images = ImageMaker(np.random.default_rng(image_seq))
        self.rng = _python_rng(structure_seq)
        self.layout_rng = _python_rng(layout_seq)
        self.counts: Counter[str] = Counter()
        first = shard * cfg.documents_per_shard
        self.documents = range(first, min(cfg.documents, first + cfg.documents_per_shard))
        self.sites = [self.text.site() for _ in range(max(1, math.ceil(len(self.documents) / DOCUMENTS_PER_SITE)))]
        # Site sizes are skewed: the k-th site is drawn with weight 1 / k.
        self.site_weights = [1.0 / (k + 1) for k in range(len(self.sites))]
        self.boilerplate_seen: set[str] = set()
        self.n_images = 0
        shares = cfg.sentences.model_dump()
        weights = [1.0 - sum(shares.values()), *shares.values()]
        self.sentence_kinds = KindDeck([corpus_text.NORMAL, *shares], weights, self.rng)
        image_shares = cfg.images.model_dump()
        broken = image_shares.pop("broken")
        weights = [(1.0 - broken) * w for w in (1.0 - sum(image_shares.values()), *image_shares.values())]
        self.image_kinds = KindDeck(
            [corpus_images.NORMAL, *image_shares, corpus_images.BROKEN], [*weights, broken], self.rng
        )

    # -- sentences

    def _sentence(self, site: Site) -> tuple[str, str]:
        kind = self.sentence_kinds.next()
        text: str | None
        if kind == corpus_text.BOILERPLATE:
            text = self.text.rng.choice(site.boilerplate)
            if text not in self.boilerplate_seen:
                self.boilerplate_seen.add(text)
                self.counts["sentences.boilerplate_distinct"] += 1
        elif kind == corpus_text.EXACT_COPY:
            text = self.text.exact_copy()
        elif kind == corpus_text.NEAR_DUPLICATE:
            text = self.text.near_duplicate()
        elif kind == corpus_text.URL:
            text = self.text.url(site)
        elif kind == corpus_text.NORMAL:
            text = None
        else:
            text = getattr(self.text, kind)()
        if text is None:  # a normal sentence, or a copy before there is anything to copy
            kind, text = corpus_text.NORMAL, self.text.normal()
            self.text.remember(text)
        self.counts[f"sentences.{kind}"] += 1
        return kind, text

    # -- images

    def _image(self) -> PlacedImage:
        maker = self.images
        kind = self.image_kinds.next()
        made: MadeImage | None = None if kind == corpus_images.NORMAL else getattr(maker, kind)()
        if made is None:
            kind, made = corpus_images.NORMAL, maker.normal()
        key = f"{self.cfg.seed}/{self.shard}/{self.n_images}".encode()
        self.n_images += 1
        name = f"{hashlib.sha1(key).hexdigest()[:16]}.{made.extension}"
        path = self.folder / name
        path.write_bytes(made.content)
        self.counts[f"images.{kind}"] += 1
        self.counts[f"images.format.{(made.format or 'none').lower()}"] += 1
        self.counts["images.bytes"] += len(made.content)
        alt = f"{self.text.adjective()} {self.text.noun()}" if self.rng.random() < 0.5 else ""
        return PlacedImage(kind, name, path.as_uri(), made, alt)

    # -- documents

    def document(self, index: int) -> Document:
        """The document with global ``index`` (documents must be drawn in order)."""
        rng = self.rng
        site = rng.choices(self.sites, weights=self.site_weights)[0]
        sigma = CHARACTERS_SIGMA
        median = self.cfg.characters_per_document / math.exp(sigma * sigma / 2)
        budget = min(MAX_CHARACTERS, median * math.exp(rng.gauss(0.0, sigma)))
        sentences: list[tuple[str, str]] = []
        characters = 0
        while characters < budget or not sentences:
            kind, text = self._sentence(site)
            sentences.append((kind, text))
            characters += len(text) + 1
        self.counts["texts.characters"] += characters
        n_images = min(MAX_IMAGES, 1 + _geometric(rng, self.cfg.images_per_document - 1))
        anchors = sorted(rng.randrange(len(sentences)) for _ in range(n_images))
        images = [(anchor, self._image()) for anchor in anchors]
        slug = "-".join(self.text.noun() for _ in range(rng.randint(2, 4)))
        url = f"https://{site.domain}/{rng.randint(2015, 2024)}/{rng.randint(1, 12):02d}/{slug}-{index}"
        return Document(index, url, site, sentences, images)


# ---------------------------------------------------------------------------------------------------------------
# Layouts


def mmc4_record(doc: Document, rng: random.Random) -> dict[str, Any]:
    """The document as an MMC4 record: one sentence per entry of ``text_list``, each image matched to the sentence
    after it, with a similarity matrix whose matched entries are the largest of their row."""
    texts = [text for _, text in doc.sentences]
    image_info, similarity = [], []
    for anchor, image in doc.images:
        sim = round(rng.uniform(0.2, 0.36), 6)
        row = [round(rng.uniform(0.05, 0.2), 4) for _ in texts]
        row[anchor] = sim
        similarity.append(row)
        image_info.append(
            {
                "image_name": image.name,
                "raw_url": image.uri,
                "matched_text_index": anchor,
                "matched_sim": sim,
                "face_detections": None,
            }
        )
    return {"url": doc.url, "text_list": texts, "image_info": image_info, "similarity_matrix": similarity}


def obelics_record(doc: Document, rng: random.Random) -> dict[str, Any]:
    """The document as an OBELICS record: paragraphs of sentences and images interleaved in parallel ``texts`` /
    ``images`` lists (one of the two null at each position), navigation labels as text nodes of their own, and the
    ``metadata`` / ``general_metadata`` JSON strings."""
    items: list[tuple[str | None, PlacedImage | None]] = []
    paragraph: list[str] = []
    size = 1 + _geometric(rng, EXTRA_SENTENCES_PER_PARAGRAPH)
    by_anchor: dict[int, list[PlacedImage]] = {}
    for anchor, image in doc.images:
        by_anchor.setdefault(anchor, []).append(image)

    def flush() -> None:
        nonlocal size
        if paragraph:
            items.append((" ".join(paragraph), None))
            paragraph.clear()
            size = 1 + _geometric(rng, EXTRA_SENTENCES_PER_PARAGRAPH)

    for i, (kind, text) in enumerate(doc.sentences):
        if i in by_anchor:
            flush()
            items.extend((None, image) for image in by_anchor[i])
        if kind == corpus_text.TOO_SHORT:
            flush()
            items.append((text, None))
            continue
        paragraph.append(text)
        if len(paragraph) >= size:
            flush()
    flush()
    metadata = [
        None
        if image is None
        else {
            "document_url": doc.url,
            "unformatted_src": image.uri,
            "src": image.uri,
            "formatted_filename": image.name.rsplit(".", 1)[0],
            "alt_text": image.alt_text,
            "original_width": image.made.width,
            "original_height": image.made.height,
            "rendered_width": image.made.width,
            "rendered_height": image.made.height,
        }
        for _, image in items
    ]
    general = {
        "url": doc.url,
        "warc_filename": f"crawl-data/CC-MAIN-2023-06/segments/{doc.index // 1000}/warc/generated.warc.gz",
        "warc_record_offset": rng.randrange(10**9),
        "warc_record_length": rng.randrange(5_000, 200_000),
    }
    return {
        "images": [None if image is None else image.uri for _, image in items],
        "metadata": json.dumps(metadata),
        "general_metadata": json.dumps(general),
        "texts": [text for text, _ in items],
    }


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a hidden temporary file (ingest skips names starting with ``.``) renamed into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def write_shard(cfg: GeneratedCorpusConfig, shard: int, out: Path, vocabulary: Vocabulary) -> dict[str, int]:
    """Write shard ``shard`` of the corpus under ``out`` (its images, its MMC4 and / or OBELICS file); return its
    counts by kind. Rewriting a shard writes the same bytes."""
    folder = out / "images" / f"{shard:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    generator = ShardGenerator(cfg, shard, vocabulary, folder)
    mmc4: list[dict[str, Any]] = []
    obelics: list[dict[str, Any]] = []
    for index in generator.documents:
        doc = generator.document(index)
        layout = cfg.layout if cfg.layout != "both" else ("mmc4" if index % 2 == 0 else "obelics")
        if layout == "mmc4":
            mmc4.append(mmc4_record(doc, generator.layout_rng))
            generator.counts["texts.mmc4"] += len(mmc4[-1]["text_list"])
        else:
            obelics.append(obelics_record(doc, generator.layout_rng))
            generator.counts["texts.obelics"] += sum(t is not None for t in obelics[-1]["texts"])
        generator.counts[f"documents.{layout}"] += 1
    name = f"shard_{shard:05d}"
    if mmc4:
        (out / "mmc4").mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mmc4)
        _atomic_write(out / "mmc4" / f"{name}.jsonl", lambda p: p.write_text(lines, encoding="utf-8"))
    if obelics:
        (out / "obelics").mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(obelics, schema=OBELICS_SCHEMA)
        _atomic_write(out / "obelics" / f"{name}.parquet", lambda p: pq.write_table(table, p))
    return dict(generator.counts)


# ---------------------------------------------------------------------------------------------------------------
# The whole corpus


def ingest_inputs(out: str | Path, layout: str = "both") -> list[IngestInput]:
    """The ``ingest.inputs`` that read a corpus written under ``out`` with ``layout``."""
    folder = Path(out)
    inputs = []
    if layout in ("mmc4", "both"):
        inputs.append(IngestInput(path=str(folder / "mmc4"), layout="mmc4", format="jsonl", source="generated-mmc4"))
    if layout in ("obelics", "both"):
        inputs.append(
            IngestInput(path=str(folder / "obelics"), layout="obelics", format="parquet", source="generated-obelics")
        )
    return inputs


def _spark_shards(
    spark: SparkSession, cfg: GeneratedCorpusConfig, out: Path, vocabulary: Vocabulary
) -> list[dict[str, int]]:
    """Every shard written by a Spark task of its own; their counts, in shard order."""
    import pandas as pd

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            shards = [int(s) for s in batch["id"]]
            counts = [json.dumps(write_shard(cfg, s, out, vocabulary)) for s in shards]
            yield pd.DataFrame({"shard": shards, "counts": counts})

    n = shard_count(cfg)
    rows = spark.range(0, n, 1, numPartitions=n).mapInPandas(run, "shard long, counts string").collect()
    return [json.loads(r["counts"]) for r in sorted(rows, key=lambda r: int(r["shard"]))]


def _shares(counts: Counter[str], prefix: str, kinds: Sequence[str]) -> dict[str, float]:
    total = sum(counts[f"{prefix}.{k}"] for k in kinds)
    return {k: round(counts[f"{prefix}.{k}"] / total, 4) if total else 0.0 for k in kinds}


def generate_corpus(cfg: GeneratedCorpusConfig, out: str | Path, spark: SparkSession | None = None) -> dict[str, Any]:
    """Write the corpus of ``cfg`` under ``out`` (by Spark tasks with ``spark`` where it has more than one shard,
    else in this process) and its manifest; return the manifest. A corpus already there with the same settings is
    kept as it is; anything else in ``out/images``, ``out/mmc4`` and ``out/obelics`` is replaced."""
    folder = Path(out).resolve()
    settings = {"generator": GENERATOR, "version": VERSION, **cfg.model_dump()}
    marker = folder / MANIFEST
    if marker.exists():
        manifest: dict[str, Any] = json.loads(marker.read_text(encoding="utf-8"))
        if manifest.get("settings") == settings:
            return manifest
        marker.unlink()
    for name in FOLDERS:
        shutil.rmtree(folder / name, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = build_vocabulary()
    if spark is None or shard_count(cfg) == 1:
        per_shard = [write_shard(cfg, s, folder, vocabulary) for s in range(shard_count(cfg))]
    else:
        per_shard = _spark_shards(spark, cfg, folder, vocabulary)
    counts: Counter[str] = Counter()
    for shard_counts in per_shard:
        counts.update(shard_counts)
    manifest = {
        "settings": settings,
        "shards": len(per_shard),
        "counts": dict(sorted(counts.items())),
        "shares": {
            "images": _shares(counts, "images", corpus_images.KINDS),
            "sentences": _shares(counts, "sentences", corpus_text.KINDS),
        },
        "ingest_inputs": [i.model_dump() for i in ingest_inputs("", cfg.layout)],  # paths relative to this folder
    }
    text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(marker, lambda p: p.write_text(text, encoding="utf-8"))
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    """What a manifest says was written: documents by layout, shards, images and their bytes, sentences."""
    counts = manifest["counts"]
    images = sum(counts.get(f"images.{k}", 0) for k in corpus_images.KINDS)
    sentences = sum(counts.get(f"sentences.{k}", 0) for k in corpus_text.KINDS)
    documents = counts.get("documents.mmc4", 0) + counts.get("documents.obelics", 0)
    return (
        f"{documents:,} documents ({counts.get('documents.mmc4', 0):,} MMC4, "
        f"{counts.get('documents.obelics', 0):,} OBELICS) in {manifest['shards']} shard"
        f"{'' if manifest['shards'] == 1 else 's'}, {images:,} images "
        f"({counts.get('images.bytes', 0) / 1e6:,.1f} MB), {sentences:,} sentences"
    )


def _with_overrides(cfg: GeneratedCorpusConfig, overrides: Sequence[str]) -> GeneratedCorpusConfig:
    """``cfg`` with ``KEY=VALUE`` settings (``images.broken=0.02``; values read as YAML) applied and validated."""
    tree = cfg.model_dump()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return GeneratedCorpusConfig.model_validate(tree)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m realsyn.corpus_generator --docs N --out DIR [--layout both] [--seed S] [--set KEY=VALUE]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, required=True, help="number of documents")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/, mmc4/, obelics/)")
    parser.add_argument("--layout", choices=("obelics", "mmc4", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs-per-shard", type=int, default=GeneratedCorpusConfig().documents_per_shard)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="e.g. images.broken=0.02"
    )
    parser.add_argument(
        "--master", default="local[*]", help="Spark master of a local session (ignored under spark-submit)"
    )
    parser.add_argument("--no-spark", action="store_true", help="write every shard in this process")
    args = parser.parse_args(argv)
    try:
        base = GeneratedCorpusConfig(
            documents=args.docs, layout=args.layout, seed=args.seed, documents_per_shard=args.docs_per_shard
        )
        cfg = _with_overrides(base, args.overrides)
    except (ValidationError, ValueError) as e:
        print(f"corpus settings: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    start = time.monotonic()
    spark = None
    if not args.no_spark:
        from realsyn.spark import get_spark

        conf = {"spark.ui.enabled": "false", "spark.sql.execution.arrow.pyspark.enabled": "true"}
        args.out.mkdir(parents=True, exist_ok=True)
        log = args.out / "_spark.log"
        spark = get_spark(SparkConfig(master=args.master, app_name="realsyn-corpus", conf=conf), jvm_log=log)
        spark.sparkContext.setLogLevel("WARN")
        print(f"spark {spark.version} ({spark.sparkContext.master}); log {log}", flush=True)
    manifest = generate_corpus(cfg, args.out, spark)
    elapsed = time.monotonic() - start
    print(f"corpus: {summary(manifest)}, in {elapsed:.1f} s -> {Path(args.out).resolve() / MANIFEST}")


if __name__ == "__main__":
    # As the installed module, not as __main__: Spark then ships this module's functions by reference.
    from realsyn import corpus_generator

    corpus_generator.main()
