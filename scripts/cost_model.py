"""Cost model of a realsyn run at the RealSyn paper's scale (arXiv 2502.12513), written as docs/cost.md.

Inputs: JSONs of ``bench/scaling.py`` (at least one; their sizes together, the largest used), optional GPU
measurement JSONs (:class:`GpuMeasurement`), and the cluster config (``conf/cluster.yaml``: generation lengths, tree
shapes).
Per stage it extrapolates:

- core-hours: the stage's driving rows at the paper's scale (:data:`DRIVERS`) over the measured rows per second per
  core of the same rows;
- GPU-hours of the GPU stages (embed, generate) from GPU throughputs: measured ones where a GPU JSON gives them,
  otherwise the figures of :func:`default_gpu_rates` (each says where it comes from), and the k-means / retrieval
  kernels' floating-point work at the GPU's peak rate;
- shuffle bytes: Spark's measured shuffle writes per driving row (the event log) times the paper's rows, beside
  an estimate from row sizes (every row the stage writes crosses one shuffle once);
- the size of every Delta table and export: measured live bytes per row times the table's rows at the paper's
  scale (:data:`TABLE_ROWS`), vectors widened to the paper's 768 dimensions;

and prices them on named AWS instances (:data:`INSTANCES`, list prices). Every figure carries its basis
(measured, published or estimate) and source, and the page lists them.

    python scripts/cost_model.py bench/results/scaling-quick.json [more.json ...] [--gpu gpu.json ...] \
        [--out docs/cost.md]

A GPU measurement JSON: ``{"device": "H100", "date": "2026-12-06", "source": "bench/embed_gpu.py ...",
"embed_images_per_s": 1900.0}`` with any of the keys of :data:`GPU_KEYS`; devices ``H100`` and ``A100``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

Basis = Literal["measured", "published", "estimate"]

PAPER = "RealSyn, arXiv 2502.12513 (https://arxiv.org/abs/2502.12513, v1 2025-02-18)"
PROJECT_PAGE = (
    "RealSyn project page, https://garygutc.github.io/RealSyn (its dataset table; quoted, not re-read here: verify)"
)
OPEN_CLIP_PROFILE = (
    "open_clip docs/model_profile.csv (https://github.com/mlfoundations/open_clip/blob/main/docs/model_profile.csv, "
    "commit 3b37473, read 2026-12-06)"
)
BENCHMARKS = "docs/benchmarks.md"
NVIDIA_A100 = (
    "NVIDIA A100 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/a100/; A100 SXM: FP32 19.5, "
    "dense FP16 tensor 312 TFLOP/s; quoted, not re-read here: verify)"
)
NVIDIA_H100 = (
    "NVIDIA H100 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/h100/; H100 SXM: FP32 67, "
    "dense FP16 tensor 989 TFLOP/s; quoted, not re-read here: verify)"
)
MLPERF_LLAMA = (
    "Red Hat, MLPerf Inference v5.1 results, Llama 3.1 8B with vLLM 0.10.0, FP8 "
    "(https://www.redhat.com/en/blog/efficient-and-reproducible-llm-inference-red-hat-mlperf-inference-v51-results; "
    "MLPerf Inference v5.1 results were published in September 2025; figure read 2026-12-06)"
)
LAMBDA_VLLM = (
    "Lambda, LLM inference benchmarks using vLLM (https://github.com/LambdaLabsML/vllm-benchmark/blob/main/"
    "benchmark_v0.md, commit 0e8fc5d, September 2024, read 2026-12-06): Llama 3.1 8B FP8, vLLM 0.5.4, 320 prompts, "
    "1xA100-80GB 1,517.54 vs 1xH100-80GB 3,400.4 output tokens/s"
)
AWS_PRICES = (
    "AWS EC2 On-Demand list prices, us-east-1, Linux (https://aws.amazon.com/ec2/pricing/on-demand/), as listed in "
    "2024, quoted, not re-read here: verify current pricing. AWS announced On-Demand "
    "cuts of up to 45% (P5) and up to 33% (P4d) in June 2025"
)


@dataclass(frozen=True)
class Figure:
    """A number with its unit, its basis (measured, published, estimate) and where it comes from."""

    value: float
    unit: str
    basis: Basis
    source: str


@dataclass(frozen=True)
class PaperScale:
    """The RealSyn corpus's counts (arXiv 2502.12513, section 3)."""

    documents: float = 118e6
    images_fetched: float = 336e6
    images_after_quality: float = 285e6
    images_final: float = 198e6
    sentences_split: float = 2.13e9
    sentences_after_basic: float = 1.82e9
    sentences_after_quality: float = 1.16e9
    sentences_final: float = 0.84e9
    sentence_leaves: float = 2e6
    image_clusters: float = 1e6
    top_k: int = 3
    release_scales: tuple[tuple[str, float], ...] = (
        ("RealSyn15M", 15_250_144),
        ("RealSyn30M", 30_328_852),
        ("RealSyn100M", 100_862_786),
    )
    tokens_per_text: float = 40.0
    dim: int = 768


PAPER_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("documents", "interleaved documents read (OBELICS)", "arXiv 2502.12513 section 3.1 (quoted, not re-read: verify)"),
    ("images_fetched", "images downloaded", PAPER),
    ("images_after_quality", "images after the size and aspect filters", PAPER),
    ("images_final", "images after perceptual and semantic dedup (= image-text pairs)", PAPER),
    ("sentences_split", "sentences split (occurrences)", PAPER),
    ("sentences_after_basic", "sentences after emoji / URL / length", PAPER),
    ("sentences_after_quality", "sentences after CAT, entropy, perplexity", PAPER),
    ("sentences_final", "sentences after dedup", PAPER),
    ("sentence_leaves", "sentence clusters (k-means leaves)", PAPER),
    ("image_clusters", "image clusters", PAPER),
    ("tokens_per_text", "mean tokens per text of the release (36-40; the upper end taken)", PROJECT_PAGE),
    ("dim", "embedding dimension of EVA02-CLIP-L/14", OPEN_CLIP_PROFILE + " (embed_dim)"),
)  # fmt: skip


# A stage's driving rows: terms summed, each ("in" | "out", table) of gold.runs, or ("funnel", "<stage>") for the
# rows_in of the first step of that stage's gold.funnel (sentence occurrences are counted only there).
@dataclass(frozen=True)
class Driver:
    """What one unit of a stage's work is, where the scaling run counts it, and how many the paper has."""

    what: str
    terms: tuple[tuple[str, str], ...]
    paper: Callable[[PaperScale], float]
    paper_note: str
    gpu: bool = False


DRIVERS: dict[str, Driver] = {
    "ingest": Driver("documents", (("out", "bronze.documents"),), lambda p: p.documents, "documents"),
    "fetch": Driver(
        "image references", (("in", "bronze.image_refs"),), lambda p: p.images_fetched, "images downloaded"
    ),
    "extract_images": Driver(
        "fetched images", (("in", "bronze.fetched_images"),), lambda p: p.images_fetched, "images downloaded"
    ),
    "extract_sentences": Driver(
        "sentence occurrences split",
        (("funnel", "extract_sentences"),),
        lambda p: p.sentences_split,
        "sentences split",
    ),
    "embed": Driver(
        "images + sentences embedded",
        (("in", "silver.images"), ("in", "silver.sentences")),
        lambda p: p.images_after_quality + p.sentences_after_quality,
        "images after quality filters + sentences after quality filters (upper bound: before dedup)",
        gpu=True,
    ),
    "semantic_dedup": Driver(
        "images + sentences",
        (("in", "silver.images"), ("in", "silver.sentences")),
        lambda p: p.images_after_quality + p.sentences_after_quality,
        "as embed (upper bound)",
    ),
    "cluster_sentences": Driver(
        "sentences", (("in", "silver.sentences"),), lambda p: p.sentences_final, "sentences after dedup"
    ),
    "retrieve": Driver("images", (("in", "silver.images"),), lambda p: p.images_final, "images after dedup"),
    "cluster_images": Driver("images", (("in", "silver.images"),), lambda p: p.images_final, "images after dedup"),
    "generate": Driver("images", (("in", "silver.images"),), lambda p: p.images_final, "images after dedup", gpu=True),
    "balance": Driver(
        "synthetic-text pairs",
        (("in", "gold.synthetic_texts"),),
        lambda p: p.images_final,
        "images after dedup (upper bound: every synthetic text kept)",
    ),
    "export": Driver(
        "dataset rows", (("in", "gold.dataset"),), lambda p: p.images_final, "images after dedup (upper bound)"
    ),
    "report": Driver(
        "dataset rows", (("in", "gold.dataset"),), lambda p: p.images_final, "images after dedup (upper bound)"
    ),
}


@dataclass(frozen=True)
class Rows:
    """A table's rows at the paper's scale: ``fixed`` rows, or the measured rows per row of ``per`` times that
    table's paper rows."""

    fixed: Callable[[PaperScale], float] | None = None
    per: str | None = None
    note: str = ""


TAGS_AT_SCALE = 4_585 + 4_000  # conf/cluster.yaml: RAM's base tags + mined_top_n
TABLE_ROWS: dict[str, Rows] = {
    "bronze.documents": Rows(lambda p: p.documents, note="documents"),
    "bronze.texts": Rows(per="bronze.documents", note="texts per document as measured"),
    "bronze.ingest_rejects": Rows(per="bronze.documents", note="per document as measured"),
    "bronze.image_refs": Rows(lambda p: p.images_fetched, note="images downloaded"),
    "bronze.fetched_images": Rows(lambda p: p.images_fetched, note="images downloaded"),
    "silver.images": Rows(lambda p: p.images_final, note="images after dedup"),
    "silver.image_rejects": Rows(lambda p: p.images_fetched - p.images_final, note="images dropped"),
    "silver.sentences": Rows(lambda p: p.sentences_final, note="sentences after dedup"),
    "silver.sentence_rejects": Rows(
        lambda p: p.sentences_split - p.sentences_final, note="occurrences dropped (upper bound: rows are distinct)"
    ),
    "silver.sentence_phrases": Rows(lambda p: p.sentences_final, note="sentences after dedup, as silver.sentences"),
    "silver.image_embeddings": Rows(lambda p: p.images_after_quality, note="images embedded (upper bound)"),
    "silver.sentence_embeddings": Rows(lambda p: p.sentences_after_quality, note="sentences embedded (upper bound)"),
    "silver.image_embedding_rejects": Rows(per="silver.image_embeddings", note="per embedded image as measured"),
    "silver.sentence_embedding_rejects": Rows(per="silver.sentence_embeddings", note="per sentence as measured"),
    "silver.sentence_centroids": Rows(lambda p: p.sentence_leaves, note="sentence leaves"),
    "silver.sentence_clusters": Rows(lambda p: p.sentences_final, note="sentences after dedup"),
    "silver.sentence_cluster_rejects": Rows(per="silver.sentences", note="per sentence as measured"),
    "silver.retrieval": Rows(lambda p: p.images_final * p.top_k, note="top 3 per image"),
    "silver.retrieval_rejects": Rows(per="silver.images", note="per image as measured"),
    "silver.image_centroids": Rows(lambda p: p.image_clusters, note="image clusters"),
    "silver.image_clusters": Rows(lambda p: p.images_final, note="images after dedup"),
    "silver.image_cluster_rejects": Rows(per="silver.images", note="per image as measured"),
    "silver.tags": Rows(lambda p: TAGS_AT_SCALE, note="RAM base tags + mined tags (conf/cluster.yaml)"),
    "gold.captions": Rows(lambda p: p.images_final, note="images after dedup"),
    "gold.image_tags": Rows(lambda p: p.images_final, note="images after dedup"),
    "gold.synthetic_texts": Rows(per="silver.images", note="per image as measured"),
    "gold.synthetic_text_rejects": Rows(per="silver.images", note="per image as measured"),
    "gold.dataset": Rows(per="silver.images", note="per image as measured"),
    "gold.dataset_rejects": Rows(per="silver.images", note="per image as measured"),
}


@dataclass(frozen=True)
class Instance:
    """An instance type and its On-Demand list price."""

    name: str
    hourly_usd: float
    vcpus: int
    gpus: int
    gpu: str
    memory: str


INSTANCES: dict[str, Instance] = {
    "m7i.2xlarge": Instance("m7i.2xlarge", 0.4032, 8, 0, "", "32 GiB"),
    "r7i.2xlarge": Instance("r7i.2xlarge", 0.5292, 8, 0, "", "64 GiB"),
    "p4d.24xlarge": Instance("p4d.24xlarge", 32.7726, 96, 8, "A100", "1152 GiB, 8 x A100 40 GB"),
    "p5.48xlarge": Instance("p5.48xlarge", 98.32, 192, 8, "H100", "2048 GiB, 8 x H100 80 GB"),
}
GPU_INSTANCE = {"A100": "p4d.24xlarge", "H100": "p5.48xlarge"}

GPU_KEYS: dict[str, str] = {
    "embed_images_per_s": "images per second through the embed pipeline (decode + EVA02-CLIP-L/14 image tower)",
    "embed_texts_per_s": "sentences per second through the CLIP text tower",
    "caption_images_per_s": "images per second through the captioner (BLIP base)",
    "llm_output_tokens_per_s": "generated tokens per second of the LLM (Llama-3-8B-Instruct on vLLM), offline",
    "fp32_tflops": "sustained float32 matrix-product rate (k-means and retrieval kernels), TFLOP/s",
}


@dataclass(frozen=True)
class GpuMeasurement:
    """One GPU measurement file: device, date, source and any of :data:`GPU_KEYS`."""

    device: str
    date: str
    source: str
    rates: dict[str, float]

    @classmethod
    def load(cls, path: Path) -> GpuMeasurement:
        """Read and check a GPU measurement JSON."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        device = str(raw.pop("device", ""))
        if device not in GPU_INSTANCE:
            raise SystemExit(f"{path}: device must be one of {sorted(GPU_INSTANCE)}, not {device!r}")
        date, source = str(raw.pop("date", "")), str(raw.pop("source", path.name))
        unknown = sorted(set(raw) - set(GPU_KEYS))
        if unknown or not date:
            raise SystemExit(f"{path}: needs a date; unknown keys {unknown} (known: {sorted(GPU_KEYS)})")
        return cls(device, date, source, {k: float(v) for k, v in raw.items()})


def _run_context(size: dict[str, Any]) -> str:
    """Wall time and load average of one size's run, where the JSON has them; else its stages' seconds."""
    if size.get("wall_s") is None:
        return f"stages {sum(float(m['seconds']) for m in size['measured']):,.0f} s"
    text = f"wall {size['wall_s']:.0f} s"
    load = size.get("load_average")
    if load:
        text += f", load average {load['before'][0]:.1f} before and {load['after'][0]:.1f} after"
    return text


# What each corpus of bench/scaling.py (its JSON's "corpus") means for the figures measured on it.
CORPUS_CAVEATS = {
    "generated": (
        "on the generated corpus (realsyn.corpus_generator: distinct drawn images and sentences at every size, with "
        "the RealSyn funnel's shares of what each filter drops), so every stage sees the corpus grow."
    ),
    "photos": (
        "on the photos demo corpus (texts from a fixed pool, photographs from a fixed set): distinct sentences and "
        "images stop growing with the documents, so stages after extraction see little of the corpus's growth."
    ),
}


def default_gpu_rates() -> dict[str, dict[str, Figure]]:
    """GPU throughputs per device where nothing was measured here, each with its basis and source.

    Anchors: the project's own H200 run of ``bench/embed_gpu.py`` (docs/benchmarks.md: ViT-L/14, random weights,
    1,828 images/s through decode + model, 2,553 images/s for the model alone; H200 and H100 SXM have the same peak
    dense FP16 rate, 989 TFLOP/s); open_clip's FLOP profile (ViT-L-14 and EVA02-L-14 image towers 162.0 GFLOPs,
    text tower 13.3; a ViT-B/16 at 384 px, BLIP base's encoder, 112.13); MLPerf v5.1 for the LLM. A100 figures are
    the H100 ones times the published ratio of peak dense FP16 (312 / 989) or, for the LLM, Lambda's measured
    A100 / H100 ratio.
    """
    a100_scale = 312 / 989
    model_alone = 2553.0  # images/s, ViT-L/14 model alone on the H200 (docs/benchmarks.md)
    texts = model_alone * 162.03 / 13.3
    captions = model_alone * 162.03 / 112.13
    h100 = {
        "embed_images_per_s": Figure(
            1828.0,
            "images/s",
            "measured",
            f"{BENCHMARKS} 'On a GPU', 2026-11-26: ViT-L/14 (random weights) on one H200, nvJPEG decode; stands in "
            "for EVA02-L/14 (same 162 image GFLOPs in the open_clip profile) and for an H100 (same FP16 peak)",
        ),
        "embed_texts_per_s": Figure(
            round(texts),
            "sentences/s",
            "estimate",
            f"the ViT-L/14 model-alone rate on the H200 (2,553 images/s, {BENCHMARKS}) x 162.03 / 13.3 GFLOPs "
            f"(image / text tower, {OPEN_CLIP_PROFILE}): the same FLOP rate on 77-token texts, tokenising not "
            "counted",
        ),
        "caption_images_per_s": Figure(
            round(captions),
            "images/s",
            "estimate",
            f"the same FLOP rate on BLIP base's ViT-B/16 encoder at 384 px (112.13 GFLOPs, the ViT-B-16-SigLIP-384 row "
            f"of {OPEN_CLIP_PROFILE}); the text decoder's ~20 greedy steps are not counted, so this is optimistic",
        ),
        "llm_output_tokens_per_s": Figure(
            5777.0,
            "tokens/s",
            "published",
            f"{MLPERF_LLAMA}: Offline scenario, one H100. FP8 weights; the config's bf16 would be slower",
        ),
        "fp32_tflops": Figure(67.0, "TFLOP/s", "published", f"peak FP32 (H100 SXM), {NVIDIA_H100}"),
    }
    a100 = {
        key: Figure(
            round(fig.value * a100_scale),
            fig.unit,
            "estimate",
            f"the H100 figure x 312 / 989 (peak dense FP16 of A100 and H100 SXM, {NVIDIA_A100}; {NVIDIA_H100})",
        )
        for key, fig in h100.items()
        if key in ("embed_images_per_s", "embed_texts_per_s", "caption_images_per_s")
    }
    a100["llm_output_tokens_per_s"] = Figure(
        round(5777.0 * 1517.54 / 3400.4),
        "tokens/s",
        "estimate",
        f"the H100 MLPerf figure x Lambda's A100 / H100 ratio ({LAMBDA_VLLM})",
    )
    a100["fp32_tflops"] = Figure(19.5, "TFLOP/s", "published", f"peak FP32 (A100 SXM), {NVIDIA_A100}")
    return {"H100": h100, "A100": a100}


def gpu_rates(measurements: Sequence[GpuMeasurement]) -> dict[str, dict[str, Figure]]:
    """The default rates with every measured value of ``measurements`` in place of its default."""
    rates = default_gpu_rates()
    for m in measurements:
        for key, value in m.rates.items():
            unit = rates[m.device][key].unit
            rates[m.device][key] = Figure(value, unit, "measured", f"{m.source} ({m.device}, {m.date})")
    return rates


@dataclass(frozen=True)
class GenerationShape:
    """Tokens per synthetic text (estimates, from the config's prompt and limits and the release's text length)."""

    prompt_tokens: float
    output_tokens: float
    output_tokens_max: int
    caption_tokens: float
    derivation: str


CHARS_PER_TOKEN = 4.0  # OpenAI's rule of thumb for English text
CHAT_TEMPLATE_TOKENS = 15  # Llama 3: <|begin_of_text|>, 3 x (header start, role, header end), 2 x <|eot_id|>, newlines
CAPTION_TOKENS = 15.0  # conf/cluster.yaml: BLIP's COCO-style captions are ~10-20 tokens
TOKENS_PER_TAG = 3.0


def generation_shape(
    system_prompt: str, user_prompt: str, max_new_tokens: int, caption_max: int, top_t: int, paper: PaperScale
) -> GenerationShape:
    """Prompt and output tokens per image: the prompt's fixed text at 4 characters per token, the chat template, the
    retrieved text and the synthetic text at the release's mean text length, a 15-token caption and top_t tags."""
    fixed = (len(system_prompt) + len(user_prompt.format(retrieved_text="", caption="", tags=""))) / CHARS_PER_TOKEN
    tags = top_t * TOKENS_PER_TAG
    prompt = fixed + CHAT_TEMPLATE_TOKENS + paper.tokens_per_text + min(CAPTION_TOKENS, caption_max) + tags
    derivation = (
        f"prompt ~{prompt:.0f} tokens = fixed text {fixed:.0f} ({len(system_prompt)} + template characters / "
        f"{CHARS_PER_TOKEN:g}) + chat template {CHAT_TEMPLATE_TOKENS} + retrieved text {paper.tokens_per_text:g} + "
        f"caption {min(CAPTION_TOKENS, caption_max):g} + {top_t} tags x {TOKENS_PER_TAG:g}; output "
        f"{paper.tokens_per_text:g} tokens (the release's mean text length), at most max_new_tokens {max_new_tokens}"
    )
    return GenerationShape(prompt, paper.tokens_per_text, max_new_tokens, min(CAPTION_TOKENS, caption_max), derivation)


@dataclass(frozen=True)
class TreeShape:
    """The k-means tree and retrieval settings that decide the kernels' floating-point work."""

    sentence_leaf_size: int
    image_leaf_size: int
    max_points_per_centroid: int
    niter: int
    boundary_passes: int
    assign_coarse_probe: int
    probe_leaves: int
    coarse_probe: int


def kmeans_flops(rows: float, leaf_size: int, tree: TreeShape, dim: int) -> float:
    """Multiply-adds x 2 of a two-level k-means of ``rows`` into rows / leaf_size leaves (K1 = sqrt(leaves) coarse
    clusters of as many leaves): Lloyd steps on each coarse cluster's sample (max_points_per_centroid per leaf),
    the same again per boundary pass (docs/benchmarks.md), and the assignment of every row to a leaf."""
    leaves = rows / leaf_size
    k1 = math.sqrt(leaves)
    fan = leaves / k1
    sample = min(rows / k1, tree.max_points_per_centroid * fan)
    train = k1 * tree.niter * sample * fan * dim * 2
    coarse = tree.niter * min(rows, tree.max_points_per_centroid * k1) * k1 * dim * 2
    assign = rows * (k1 + tree.assign_coarse_probe * fan) * dim * 2
    return coarse + train * (1 + tree.boundary_passes) + assign


def retrieval_flops(images: float, sentences: float, tree: TreeShape, dim: int) -> tuple[float, float]:
    """(multiply-adds x 2 of the tree's retrieval, of brute force): an image compares with the K1 coarse centroids,
    the leaves of its coarse_probe nearest coarse clusters and the sentences of its probe_leaves leaves
    (docs/benchmarks.md's count); brute force with every sentence."""
    leaves = sentences / tree.sentence_leaf_size
    k1 = math.sqrt(leaves)
    per_image = k1 + tree.coarse_probe * leaves / k1 + tree.probe_leaves * tree.sentence_leaf_size
    return images * per_image * dim * 2, images * sentences * dim * 2


@dataclass(frozen=True)
class StageCost:
    """One stage at the paper's scale."""

    stage: str
    driver: Driver
    measured_rows: int
    seconds: float
    cores: int
    rate_per_core: float | None
    paper_rows: float
    core_hours: float | None
    busy_share: float | None
    startup_dominated: bool
    rate_growth: float | None
    shuffle_bytes_measured: float | None
    shuffle_bytes_rowsize: float | None
    peak_driver_bytes: int | None
    peak_worker_bytes: int | None
    gpu_hours: dict[str, float] = field(default_factory=dict)


def driving_rows(stage: Mapping[str, Any], funnel: Mapping[str, Any], driver: Driver) -> int:
    """The measured count of a stage's driving rows (the sum of its terms)."""
    total = 0
    for kind, name in driver.terms:
        if kind == "funnel":
            steps = sorted(funnel.get(name, []), key=lambda s: int(s["step_index"]))
            total += int(steps[0]["rows_in"]) if steps else 0
        else:
            total += int(stage[f"rows_{kind}"].get(name, 0))
    return total


def describe(driver: Driver) -> str:
    """Where the scaling run counts a stage's driving rows, in words."""
    words = {"in": "rows in", "out": "rows out", "funnel": "gold.funnel first step's rows in of"}
    return " + ".join(f"{words[kind]} {name}" for kind, name in driver.terms)


def largest(document: Mapping[str, Any]) -> dict[str, Any]:
    """The size of the scaling JSON with the most documents."""
    return dict(max(document["sizes"], key=lambda s: s["documents"]))


def rate_per_core(stage: Mapping[str, Any], funnel: Mapping[str, Any], driver: Driver, cores: int) -> float | None:
    """Driving rows per second per core of one stage of one size (None without rows or time)."""
    rows, seconds = driving_rows(stage, funnel, driver), float(stage["seconds"])
    return rows / seconds / cores if rows and seconds > 0 else None


VECTOR_COLUMNS = ("vector", "embedding")  # embeddings and centroids; other float lists (scores) keep their length


def widened(table: Mapping[str, Any]) -> dict[str, int]:
    """The measured lengths of the table's embedding / centroid columns."""
    return {c: d for c, d in table.get("vector_dims", {}).items() if c in VECTOR_COLUMNS}


def table_bytes_per_row(table: Mapping[str, Any], dim: int) -> float | None:
    """Live bytes per row, every embedding or centroid column widened to ``dim`` float32 values (4 bytes each:
    floats barely compress)."""
    if not table["rows"]:
        return None
    widen = sum((dim - d) * 4 for d in widened(table).values())
    return table["live_bytes"] / table["rows"] + widen


def paper_rows(name: str, tables: Mapping[str, Mapping[str, Any]], paper: PaperScale) -> float | None:
    """A table's rows at the paper's scale (:data:`TABLE_ROWS`); None for a table it does not scale."""
    rule = TABLE_ROWS.get(name)
    if rule is None:
        return None
    if rule.fixed is not None:
        return rule.fixed(paper)
    assert rule.per is not None
    base, ref = tables.get(name), tables.get(rule.per)
    ref_rows = paper_rows(rule.per, tables, paper)
    if base is None or ref is None or not ref["rows"] or ref_rows is None:
        return None
    return base["rows"] / ref["rows"] * ref_rows


def stage_costs(
    document: Mapping[str, Any],
    paper: PaperScale,
    rates: Mapping[str, Mapping[str, Figure]],
    gen: GenerationShape,
    tree: TreeShape,
    device: str = "H100",
) -> list[StageCost]:
    """Every stage of the largest size at the paper's scale."""
    sizes = sorted(document["sizes"], key=lambda s: s["documents"])
    size = sizes[-1]
    previous = sizes[-2] if len(sizes) > 1 else None
    cores, funnel, tables = int(size["cores"]), size.get("funnel", {}), size.get("tables", {})
    costs = []
    for stage in size["measured"]:
        driver = DRIVERS.get(stage["stage"])
        if driver is None:
            continue
        rows = driving_rows(stage, funnel, driver)
        rate = rate_per_core(stage, funnel, driver, cores)
        growth = None
        if previous is not None and rate is not None:
            before = next((s for s in previous["measured"] if s["stage"] == stage["stage"]), None)
            earlier = (
                rate_per_core(before, previous.get("funnel", {}), driver, int(previous["cores"])) if before else None
            )
            growth = rate / earlier if earlier else None
        busy = stage.get("task_busy_share")
        at_scale = driver.paper(paper)
        shuffle = stage.get("spark", {}).get("shuffle_write_bytes")
        written = [
            (paper_rows(t, tables, paper), table_bytes_per_row(tables[t], paper.dim))
            for t in stage["rows_out"]
            if t in tables
        ]
        rowsize = sum(r * b for r, b in written if r is not None and b is not None) if written else None
        peaks = stage.get("peak_rss_bytes", {})
        costs.append(
            StageCost(
                stage=stage["stage"],
                driver=driver,
                measured_rows=rows,
                seconds=float(stage["seconds"]),
                cores=cores,
                rate_per_core=rate,
                paper_rows=at_scale,
                core_hours=at_scale / rate / 3600 if rate else None,
                busy_share=busy,
                startup_dominated=(busy is not None and busy < 0.5) or (growth is not None and growth > 1.5),
                rate_growth=growth,
                shuffle_bytes_measured=shuffle / rows * at_scale if shuffle is not None and rows else None,
                shuffle_bytes_rowsize=rowsize,
                peak_driver_bytes=peaks.get("driver"),
                peak_worker_bytes=peaks.get("python_worker_largest"),
                gpu_hours=gpu_hours(stage["stage"], paper, rates[device], gen, tree),
            )
        )
    return costs


def gpu_hours(
    stage: str, paper: PaperScale, rates: Mapping[str, Figure], gen: GenerationShape, tree: TreeShape
) -> dict[str, float]:
    """GPU-hours of one stage on one GPU, by part; the kernels at the GPU's peak float32 rate (a lower bound)."""
    flops = rates["fp32_tflops"].value * 1e12
    if stage == "embed":
        return {
            "images": paper.images_after_quality / rates["embed_images_per_s"].value / 3600,
            "sentences": paper.sentences_after_quality / rates["embed_texts_per_s"].value / 3600,
        }
    if stage == "generate":
        return {
            "captions": paper.images_final / rates["caption_images_per_s"].value / 3600,
            "llm": paper.images_final * gen.output_tokens / rates["llm_output_tokens_per_s"].value / 3600,
            "llm at max_new_tokens": paper.images_final
            * gen.output_tokens_max
            / rates["llm_output_tokens_per_s"].value
            / 3600,
            "text embedding": paper.images_final / rates["embed_texts_per_s"].value / 3600,
        }
    if stage == "cluster_sentences":
        return {"kernels": kmeans_flops(paper.sentences_final, tree.sentence_leaf_size, tree, paper.dim) / flops / 3600}
    if stage == "cluster_images":
        return {"kernels": kmeans_flops(paper.images_final, tree.image_leaf_size, tree, paper.dim) / flops / 3600}
    if stage == "retrieve":
        tree_flops, _ = retrieval_flops(paper.images_final, paper.sentences_final, tree, paper.dim)
        return {"kernels": tree_flops / flops / 3600}
    return {}


def billed_gpu_hours(cost: StageCost) -> float:
    """The GPU-hours a GPU stage is billed for (the expected LLM output, not the max_new_tokens bound)."""
    return sum(v for k, v in cost.gpu_hours.items() if k != "llm at max_new_tokens")


@dataclass(frozen=True)
class Bill:
    """Hours and dollars of a run at the paper's scale on one CPU and one GPU instance type."""

    cpu_instance: Instance
    gpu_instance: Instance
    core_hours: float
    gpu_hours: float

    @property
    def cpu_usd(self) -> float:
        """CPU stages: a core-hour billed as one vCPU-hour of the CPU instance."""
        return self.core_hours * self.cpu_instance.hourly_usd / self.cpu_instance.vcpus

    @property
    def gpu_usd(self) -> float:
        """GPU stages: a GPU-hour billed as one GPU's share of the GPU instance."""
        return self.gpu_hours * self.gpu_instance.hourly_usd / self.gpu_instance.gpus

    @property
    def total_usd(self) -> float:
        """CPU and GPU together."""
        return self.cpu_usd + self.gpu_usd


def bill(costs: Sequence[StageCost], cpu: Instance, gpu: Instance) -> Bill:
    """CPU stages' core-hours (GPU stages run on the GPU instance, whose CPUs come with it) and GPU stages'
    GPU-hours."""
    core = sum(c.core_hours or 0.0 for c in costs if not c.driver.gpu)
    gpu_h = sum(billed_gpu_hours(c) for c in costs if c.driver.gpu)
    return Bill(cpu, gpu, core, gpu_h)


def fmt(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators; '-' for None."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 10 ** (-digits) * 10:
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"


def human_bytes(value: float | None) -> str:
    """Bytes in B, KB, MB, GB, TB, PB (powers of 1000)."""
    if value is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:,.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} PB"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def render(
    document: Mapping[str, Any],
    source: str,
    paper: PaperScale,
    rates: Mapping[str, Mapping[str, Figure]],
    gen: GenerationShape,
    tree: TreeShape,
    measurements: Sequence[GpuMeasurement],
    command: str,
) -> str:
    """docs/cost.md."""
    size = largest(document)
    costs = {d: stage_costs(document, paper, rates, gen, tree, d) for d in ("H100", "A100")}
    main = costs["H100"]
    out: list[str] = []
    add = out.append
    dominated = [c.stage for c in main if c.startup_dominated]
    add("# Cost at the paper's scale\n")
    add(
        f"Generated by `{command}` from `{source}` (schema `{document.get('schema')}`, started "
        f"{document.get('started_at')}, code `{size.get('code_version')}`), with "
        + (", ".join(f"`{m.source}` ({m.device}, {m.date})" for m in measurements) or "no GPU measurement file")
        + ". Do not edit by hand: rerun the script. Every figure is marked **measured** (a benchmark output file of "
        "this project, named), **published** (a named public source, linked and dated) or **estimate** (derived "
        "as stated); dollar figures are list prices: **verify current pricing**.\n"
    )
    host = document.get("host", {})
    add("## What was measured\n")
    counts = [format(s["documents"], ",") for s in document["sizes"]]
    counts_text = " and ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
    overrides = "".join(f" `--set {o}`" for o in document.get("overrides") or [])
    add(
        f"`bench/scaling.py` ran `jobs.pipeline` on {counts_text} "
        f"documents of the `{document.get('corpus')}` corpus with `{document.get('conf')}`{overrides}"
        f" (tiny random-weight models), on {host.get('logical_cpus')} CPUs ({host.get('cpu_model')}, "
        f"{host.get('memory_bytes', 0) / 2**30:.0f} GiB, {host.get('platform')}), Spark master `{size['master']}` = "
        f"{size['cores']} cores. The model uses the largest size, **{size['documents']:,} documents** "
        f"({_run_context(size)}).{' ' + document['note'] if document.get('note') else ''}\n"
    )
    if dominated:
        add(
            f"**Start-up dominated.** At this size {len(dominated)} of {len(main)} stages ({', '.join(dominated)}) "
            "spend most of their time in fixed cost, not in work per row: fewer than half of their seconds had a "
            "Spark task running, or their rate per core rose more than 1.5x from the previous size. Their per-core "
            "rates, and so their core-hours below, are far too low a rate and far too high a cost; they only say "
            "what this size measured. The final figures are to be regenerated from a 10k / 100k-document run "
            "(`bench/scaling.py --sizes 10000,100000`) on the realistic corpus.\n"
        )
    whole = size.get("whole_run", {})
    peaks, cpu = whole.get("peak_rss_bytes", {}), whole.get("cpu_seconds", {})
    if peaks:
        commands = "; ".join(f"{k}: `{v[:90]}`" for k, v in size.get("process_commands", {}).items())
        add(
            f"Whole run at {size['documents']:,} documents (measured, psutil every 0.25 s): peak RSS of the driver "
            f"(Python + JVM) {_mib(peaks.get('driver'))} MiB, of the largest Python worker "
            f"{_mib(peaks.get('python_worker_largest'))} MiB, of all Python workers together "
            f"{_mib(peaks.get('python_worker'))} MiB (forked workers share pages, so this overstates), of the "
            f"whole process tree {_mib(peaks.get('tree'))} MiB; CPU seconds "
            + ", ".join(f"{k} {v:,.0f}" for k, v in cpu.items())
            + f". Processes by kind (first command line seen): {commands}.\n"
        )
    add("Measured rates per size (driving rows per second per core; busy = share of the stage with a task running):\n")
    header = "| stage | driving rows | " + " | ".join(f"{s['documents']:,} docs" for s in document["sizes"]) + " |"
    add(header)
    add("|---|---|" + "---:|" * len(document["sizes"]))
    for stage, driver in DRIVERS.items():
        cells = []
        for s in document["sizes"]:
            m = next((x for x in s["measured"] if x["stage"] == stage), None)
            if m is None:
                cells.append("-")
                continue
            rate = rate_per_core(m, s.get("funnel", {}), driver, int(s["cores"]))
            rows = driving_rows(m, s.get("funnel", {}), driver)
            busy = m.get("task_busy_share")
            busy_text = f", busy {busy:.2f}" if busy is not None else ""
            cells.append(f"{fmt(rate, 1)}/s ({rows:,} in {m['seconds']:.1f} s{busy_text})")
        add(f"| {stage} | {driver.what} ({describe(driver)}) | " + " | ".join(cells) + " |")
    add("")

    add("## The paper's scale\n")
    add("| quantity | value | basis | source |\n|---|---:|---|---|")
    for name, what, src in PAPER_FIGURES:
        add(f"| {what} | {fmt(getattr(paper, name))} | published | {src} |")
    for label, pairs in paper.release_scales:
        add(f"| {label} pairs | {pairs:,.0f} | published | {PROJECT_PAGE} |")
    add("")

    add("## Per stage\n")
    add(
        "Core-hours = rows at the paper's scale / measured rows per second per core / 3600 (measured rate, "
        "extrapolated linearly). A core is one of this machine's vCPUs. GPU-hours on one H100 (A100 in brackets) "
        "from the GPU rates below. Shuffle: Spark's shuffle bytes written in the stage (event log) per driving row "
        "x the paper's rows (measured per row, extrapolated); beside it an estimate from row sizes: every row the "
        "stage writes, at its measured bytes per row and the paper's row count, crossing one shuffle once. Peak "
        "RSS: measured at the largest size (driver: the pipeline's Python process + the Spark JVM; worker: the "
        "largest single PySpark Python worker).\n"
    )
    add(
        "| stage | driving rows at the paper's scale (published) | rate per core (measured) | core-hours "
        "(measured rate, extrapolated) | GPU-hours H100 (A100) (rates below) | shuffle (measured per row, "
        "extrapolated) | shuffle (row-size estimate) | peak RSS driver / worker, MiB (measured) |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    a100 = {c.stage: c for c in costs["A100"]}
    for c in main:
        gpu = ""
        if c.gpu_hours:
            h, a = billed_gpu_hours(c), billed_gpu_hours(a100[c.stage])
            gpu = f"{fmt(h, 1)} ({fmt(a, 1)})" + ("" if c.driver.gpu else " kernels only, not billed")
        flag = " (start-up dominated)" if c.startup_dominated else ""
        add(
            f"| {c.stage} | {c.driver.what}: {fmt(c.paper_rows)} ({c.driver.paper_note}) | {fmt(c.rate_per_core, 1)}"
            f"{flag} | {fmt(c.core_hours)}{' (tiny CPU models: not billed)' if c.driver.gpu else ''} | {gpu or '-'} | "
            f"{human_bytes(c.shuffle_bytes_measured)} | {human_bytes(c.shuffle_bytes_rowsize)} | "
            f"{_mib(c.peak_driver_bytes)} / {_mib(c.peak_worker_bytes)} |"
        )
    add("")
    gen_h = next((c for c in main if c.stage == "generate"), None)
    if gen_h is not None:
        parts = ", ".join(f"{k} {fmt(v, 1)}" for k, v in gen_h.gpu_hours.items())
        add(f"Generate on one H100, by part (GPU-hours): {parts}. Tokens per image (estimate): {gen.derivation}.\n")
    emb = next((c for c in main if c.stage == "embed"), None)
    if emb is not None:
        add(
            "Embed on one H100, by part (GPU-hours): "
            + ", ".join(f"{k} {fmt(v, 1)}" for k, v in emb.gpu_hours.items())
            + ".\n"
        )

    add("## Retrieval against the paper\n")
    tree_f, brute_f = retrieval_flops(paper.images_final, paper.sentences_final, tree, paper.dim)
    a100_peak = rates["A100"]["fp32_tflops"].value * 1e12
    ret = next((c for c in main if c.stage == "retrieve"), None)
    add(
        f"The paper: hierarchical retrieval within 40 GPU-hours on 8 x A100, brute force > 10,000 GPU-hours "
        f"({PAPER}). Here (estimate, 2 flops per multiply-add, dimension {paper.dim}): the tree's kernels are "
        f"{tree_f:.2e} flops ({tree_f / paper.images_final / paper.dim / 2:,.0f} dot products per image: "
        f"sqrt(leaves) coarse centroids, the leaves of {tree.coarse_probe} coarse clusters, {tree.probe_leaves} "
        f"leaves x {tree.sentence_leaf_size} sentences), **{tree_f / a100_peak / 3600:.2f} A100-hours** at the "
        f"A100's peak FP32 rate ({rates['A100']['fp32_tflops'].value:g} TFLOP/s, {NVIDIA_A100}); brute force is "
        f"{brute_f:.2e} flops, **{brute_f / a100_peak / 3600:,.0f} A100-hours** at the same peak, "
        f"{brute_f / tree_f:,.0f}x the tree's. Peak rates are never reached, so both are lower bounds; the "
        f"paper's > 10,000 GPU-hours for brute force means at most {brute_f / a100_peak / 3600 / 10_000:.0%} of that "
        f"peak, and its 40 GPU-hours are {40 / (tree_f / a100_peak / 3600):,.0f}x the tree's kernels at peak. In "
        "this pipeline what costs is the work around the dot products (reading, moving each image to its leaves, "
        "merging), which is Spark's, on CPUs.\n"
    )
    if ret is not None:
        add(
            f"The stage as measured here, on CPUs (the shuffle that brings each image to its ~{tree.probe_leaves} "
            f"leaves included): {fmt(ret.core_hours)} core-hours at {fmt(ret.rate_per_core, 1)} images/s per core"
            + (" (start-up dominated at this size)" if ret.startup_dominated else "")
            + f"; {BENCHMARKS} measured the stage at 1.62 ms per image on local[2] (200k sentences x 20k images, "
            f"dim 512, 2026-12-03), i.e. {paper.images_final * 1.62e-3 * 2 / 3600:,.0f} core-hours for "
            f"{fmt(paper.images_final)} images if that rate held (the kernels were 35% of it; the descent grows with "
            "the tree, so it would not quite hold).\n"
        )

    add("## GPU rates\n")
    add("| device | figure | value | basis | source |\n|---|---|---:|---|---|")
    for device, figures in rates.items():
        for key, fig in figures.items():
            value = fmt(fig.value, 1 if fig.value < 100 else 0)
            add(f"| {device} | {GPU_KEYS[key]} | {value} {fig.unit} | {fig.basis} | {fig.source} |")
    add("")

    add("## Tables and exports\n")
    tables = size.get("tables", {})
    add(
        "Bytes per row: live bytes (the files of the table's current Delta version) / rows, measured at the largest "
        "size, with every embedding or centroid column widened from its measured length to "
        f"{paper.dim} float32 values; rows at the paper's scale as noted (estimate where a table is scaled per row "
        "of another). Snappy-compressed parquet of the demo's data; real text and images compress differently.\n"
    )
    add(
        "| table | rows (measured) | bytes/row (measured, widened) | rows at paper scale (published or estimate) | "
        "size at paper scale (extrapolated) |"
    )
    add("|---|---:|---:|---:|---:|")
    total = 0.0
    for name, t in sorted(tables.items()):
        per_row = table_bytes_per_row(t, paper.dim)
        rows_at = paper_rows(name, tables, paper)
        size_at = per_row * rows_at if per_row is not None and rows_at is not None else None
        total += size_at or 0.0
        dims = ", ".join(f"{c} {d} -> {paper.dim}" for c, d in widened(t).items())
        note = TABLE_ROWS[name].note if name in TABLE_ROWS else "not scaled"
        add(
            f"| {name}{f' ({dims})' if dims else ''} | {t['rows']:,} | {fmt(per_row)} | "
            f"{fmt(rows_at)} ({note}) | {human_bytes(size_at)} |"
        )
    add(f"| **all tables** | | | | **{human_bytes(total)}** |\n")
    exports = size.get("exports", {})
    if exports:
        add("Exports: bytes per row of the largest export of each format, times the release's three scales.\n")
        scales = " | ".join(n for n, _ in paper.release_scales)
        add(f"| format | measured (scale: rows, bytes) | bytes/row | {scales} |")
        add("|---|---|---:|" + "---:|" * len(paper.release_scales))
        for fmt_name in sorted({k.split("/")[1] for k in exports}):
            best = max(
                (v | {"scale": k.split("/")[0]} for k, v in exports.items() if k.endswith("/" + fmt_name)),
                key=lambda v: v["rows"] or 0,
            )
            per_row = best["bytes"] / best["rows"] if best["rows"] else None
            at_scales = " | ".join(human_bytes(per_row * n if per_row else None) for _, n in paper.release_scales)
            add(
                f"| {fmt_name} | {best['scale']}: {best['rows'] or 0:,} rows, {human_bytes(best['bytes'])} | "
                f"{fmt(per_row)} | {at_scales} |"
            )
        fetched = tables.get("bronze.fetched_images")
        if fetched and fetched["rows"]:
            add(
                f"\nThe WebDataset shards, bronze.fetched_images and silver.images hold the image bytes (`fetch."
                "content_store: table`): the demo's images average "
                f"{human_bytes(fetched['live_bytes'] / fetched['rows'])} per row here; web images are larger, so "
                "these sizes scale with the real mean image size.\n"
            )

    add("## The bill\n")
    add(
        f"{AWS_PRICES}. A core-hour is billed as one vCPU-hour (instance price / vCPUs); a GPU-hour as one GPU's "
        "share of an 8-GPU instance. The CPU rows bill the CPU stages (the GPU stages' CPUs come with the GPU "
        "instance); the GPU rows bill embed and generate (the LLM at the expected output length). k-means and "
        "retrieval are billed as the CPU stages they were measured as; their kernels' GPU-hours are shown above "
        "for comparison only.\n"
    )
    add("| instance | list price, USD/h (published) | per unit | hours | cost, USD |\n|---|---:|---:|---:|---:|")
    lines = []
    for cpu_name in ("m7i.2xlarge", "r7i.2xlarge"):
        b = bill(main, INSTANCES[cpu_name], INSTANCES["p5.48xlarge"])
        lines.append(b)
        inst = INSTANCES[cpu_name]
        add(
            f"| {inst.name} ({inst.vcpus} vCPU, {inst.memory}) | {inst.hourly_usd:.4f} | "
            f"{inst.hourly_usd / inst.vcpus:.4f} per vCPU-hour | {fmt(b.core_hours)} core-hours | {fmt(b.cpu_usd)} |"
        )
    for device in ("H100", "A100"):
        inst = INSTANCES[GPU_INSTANCE[device]]
        b = bill(costs[device], INSTANCES["m7i.2xlarge"], inst)
        add(
            f"| {inst.name} ({inst.memory}) | {inst.hourly_usd:.4f} | {inst.hourly_usd / inst.gpus:.4f} per "
            f"GPU-hour | {fmt(b.gpu_hours)} {device}-hours | {fmt(b.gpu_usd)} |"
        )
    h100 = bill(main, INSTANCES["m7i.2xlarge"], INSTANCES["p5.48xlarge"])
    a100b = bill(costs["A100"], INSTANCES["m7i.2xlarge"], INSTANCES["p4d.24xlarge"])
    add(
        f"\nTotal on m7i.2xlarge + p5.48xlarge: **USD {fmt(h100.total_usd)}**; on m7i.2xlarge + p4d.24xlarge: "
        f"**USD {fmt(a100b.total_usd)}** (list prices; verify current pricing"
        + ("; CPU part start-up dominated, see above" if dominated else "")
        + ").\n"
    )

    add("## Caveats\n")
    add(
        f"- **Measured** here: stage seconds, rows, memory, CPU, Spark task metrics and table sizes of "
        f"`jobs.pipeline` on a {host.get('logical_cpus')}-CPU machine (`{size['master']}`) with tiny random-weight "
        f"models, {CORPUS_CAVEATS.get(str(document.get('corpus')), CORPUS_CAVEATS['photos'])} "
        "On the GPU side only the H200 embedding run of docs/benchmarks.md was measured by this project.\n"
        "- **Extrapolated**: every core-hour is a per-core rate from 2 cores applied linearly to 10^8-10^9 rows. "
        "Rates at 2 cores need not hold at 1,000: Spark's shuffle at scale spills and crosses the network (here it "
        "stays on one disk), skew leaves some tasks long, Delta commits and log replay grow with the table's "
        "files, and the driver (which here shares the cores) becomes a separate machine. Per-row rates of stages "
        "with work above linear (dedup candidate pairs, k-means over more leaves, retrieval's descent over a "
        "larger tree) fall as the corpus grows.\n"
        "- **GPU throughputs** are published figures or estimates from FLOP ratios unless a GPU measurement file "
        "says otherwise; published LLM figures use FP8 and other prompts, the config's bf16 is slower. Kernel "
        "GPU-hours at peak rates are lower bounds.\n"
        "- **Sizes** are the measured corpus's bytes per row widened for vectors"
        + (
            " (drawn images at the generator's sizes, sentences of OBELICS's length)"
            if document.get("corpus") == "generated"
            else " (short texts, small drawn and sample images); real documents, sentences and images are longer"
        )
        + ".\n"
        "- **Prices** are On-Demand list prices as quoted above (not re-read here); spot, savings plans "
        "and the June 2025 GPU cuts lower them: verify current pricing.\n"
    )
    add("## Regenerating\n")
    add(
        "```\nflock /tmp/spark.lock .venv/bin/python -u bench/scaling.py --sizes 10000,100000 --json <scaling.json>\n"
        "python scripts/cost_model.py <scaling.json> [--gpu <gpu.json> ...]\n```\n\n"
        "A GPU measurement file replaces the default rate of each key it holds for its device (H100 or A100), e.g. "
        '`{"device": "H100", "date": "2026-12-06", "source": "bench/embed_gpu.py --models eva02-l-14", '
        '"embed_images_per_s": 1900}`; keys: ' + "; ".join(f"`{k}`: {v}" for k, v in GPU_KEYS.items()) + ".\n"
    )
    add("## Sources\n")
    for s in (PAPER, PROJECT_PAGE, OPEN_CLIP_PROFILE, NVIDIA_A100, NVIDIA_H100, MLPERF_LLAMA, LAMBDA_VLLM, AWS_PRICES):
        add(f"- {s}")
    add(f"- {BENCHMARKS}: the project's own measured figures (embedding on an H200, retrieval on local[2])")
    add(f"- `{source}`: the scaling run (measured)")
    return wrap_markdown("\n".join(out)) + "\n"


def wrap_markdown(text: str, width: int = 120) -> str:
    """Wrap paragraphs and list items at ``width``; tables, code blocks and headings stay as they are."""
    lines, code = [], False
    for line in text.split("\n"):
        code = code != line.startswith("```")
        if code or line.startswith(("```", "|", "#")) or len(line) <= width:
            lines.append(line)
        elif line.startswith("- "):
            lines += textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False, break_long_words=False)
        else:
            lines += textwrap.wrap(line, width, break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)


def shapes_from_config(path: Path, paper: PaperScale) -> tuple[GenerationShape, TreeShape]:
    """Generation lengths and tree shapes from a realsyn config file (``conf/cluster.yaml``)."""
    from realsyn.config import load_config

    # The shared cluster config names no storage; a placeholder lets it load (nothing is written).
    cfg = load_config(path, ["storage.root=cost-model-placeholder"])
    g = cfg.generate
    gen = generation_shape(
        g.system_prompt, g.user_prompt, g.max_new_tokens, g.caption_max_new_tokens, g.tags.top_t, paper
    )
    s, i = cfg.cluster_sentences, cfg.cluster_images
    tree = TreeShape(
        sentence_leaf_size=s.leaf_size,
        image_leaf_size=i.leaf_size,
        max_points_per_centroid=s.max_points_per_centroid,
        niter=s.niter,
        boundary_passes=s.boundary_passes,
        assign_coarse_probe=s.assign_coarse_probe,
        probe_leaves=cfg.retrieve.probe_leaves,
        coarse_probe=cfg.retrieve.coarse_probe,
    )
    return gen, tree


def merged_sizes(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One scaling document from several ``(name, JSON)`` of bench/scaling.py: the first one's settings and the sizes
    of all (of two runs of one size, the later file's), with a ``note`` naming the run behind each size when they
    come from more than one file. The runs must share corpus, config and overrides."""
    first = documents[0][1]
    for name, doc in documents[1:]:
        for key in ("schema", "corpus", "conf", "overrides"):
            if doc.get(key) != first.get(key):
                raise SystemExit(f"{name}: its {key} {doc.get(key)!r} differs from {documents[0][0]}'s")
    by_size = {s["documents"]: (name, s) for name, doc in documents for s in doc["sizes"]}
    merged = {**first, "sizes": [by_size[n][1] for n in sorted(by_size)]}
    if len(documents) > 1:
        merged["note"] = (
            "The sizes come from separate runs: "
            + "; ".join(
                f"{n:,} documents run {s.get('run_id')} (code `{s.get('code_version')}`) in `{name}`"
                for n, (name, s) in sorted(by_size.items())
            )
            + "."
        )
    return merged


def main(argv: Sequence[str] | None = None) -> None:
    """Read the scaling JSONs (and GPU JSONs), write docs/cost.md, print the totals."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "scaling", type=Path, nargs="+", help="JSONs written by bench/scaling.py (their sizes together)"
    )
    parser.add_argument("--gpu", type=Path, action="append", default=[], help="a GPU measurement JSON")
    parser.add_argument("--config", type=Path, default=REPO / "conf" / "cluster.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "cost.md")
    args = parser.parse_args(argv)
    paper = PaperScale()
    names = [
        p.resolve().relative_to(REPO).as_posix() if p.resolve().is_relative_to(REPO) else str(p) for p in args.scaling
    ]
    document = merged_sizes(
        [(n, json.loads(p.read_text(encoding="utf-8"))) for n, p in zip(names, args.scaling, strict=True)]
    )
    measurements = [GpuMeasurement.load(p) for p in args.gpu]
    rates = gpu_rates(measurements)
    gen, tree = shapes_from_config(args.config, paper)
    source = ", ".join(names)
    command = "python scripts/cost_model.py " + " ".join([*names, *(f"--gpu {p}" for p in args.gpu)])
    args.out.write_text(render(document, source, paper, rates, gen, tree, measurements, command), encoding="utf-8")
    costs = stage_costs(document, paper, rates, gen, tree)
    total = bill(costs, INSTANCES["m7i.2xlarge"], INSTANCES["p5.48xlarge"])
    print(f"wrote {args.out}")
    for c in costs:
        print(f"  {c.stage:<18} core-hours {fmt(c.core_hours):>12}  GPU-hours {fmt(billed_gpu_hours(c), 1):>8}")
    print(f"core_hours: {total.core_hours:,.0f}  gpu_hours_h100: {total.gpu_hours:,.0f}")
    print(f"cost_usd_m7i_p5: {total.total_usd:,.0f}")


if __name__ == "__main__":
    main()
