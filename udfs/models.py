"""The model registry and what every model stage shares: device choice, loading once per worker, OOM halving.

One registry file (conf/models.yaml) names every model the pipeline runs, of four kinds: ``clip`` encoders (the
embed stage, the tagger and the similarity filter), ``captioner`` image-to-text models, ``llm`` chat models and
``vlm`` vision-language chat models (the generate stage). A fifth kind, ``lm``, is a plain causal LM that scores
text: the perplexity filter builds its entry from ``extract_sentences.perplexity.model``
(udfs.sentences.causal_lm_spec). An entry says where the weights
come from (an open_clip name and tag or checkpoint, a Hugging Face Hub id or local directory, a pinned revision),
whether the model may run in half precision, and, for tests and the offline demo, an inline architecture config
to build with random weights. Tiny random captioners, LLMs and VLMs get a tokenizer built here from a fixed
character alphabet (no download), with a chat template for LLMs (udfs.vlm adds the image tokens of VLMs).

Loading goes through :func:`cached`, once per Python process and key (spaCy pipelines too, through
:func:`load_spacy`); :func:`build_causal_lm` builds the causal LMs (the generate stage's ``llm``, with a chat
template, and the perplexity ``lm``); :func:`pick_device` maps the GPU Spark assigned to a task to a torch device;
:func:`run_halving` runs a batch in slices and halves the slice on every out-of-memory error. No Spark here; heavy
imports happen inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "fp16", "bf16"]
DevicePolicy = Literal["auto", "cpu", "cuda"]
ModelKind = Literal["clip", "captioner", "llm", "vlm", "lm"]
# The architectures an inline ``vlm`` config may have: udfs.vlm builds their processor locally (image processor,
# image tokens, chat template), which is specific to each.
INLINE_VLM_TYPES = ("qwen2_vl",)

T = TypeVar("T")


class ModelNotAvailable(RuntimeError):
    """The weights (or config) of a registered model cannot be found; the message names what was looked for."""


class RegistryError(ValueError):
    """The model registry file is invalid or does not name the requested model."""


class ModelSpec(BaseModel):
    """One named entry of the model registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    # What the model does: clip (image and text encoder), captioner (image -> text), llm (chat / instruction LM),
    # vlm (chat model that reads an image and text), lm (a plain causal LM that scores text: the perplexity filter).
    kind: ModelKind = "clip"
    family: Literal["open_clip", "hf"]
    # open_clip: a built-in architecture name ("ViT-B-32", "EVA02-L-14"), or "hf-hub:org/repo" / "local-dir:/path".
    architecture: str | None = None
    # open_clip: an inline architecture (embed_dim, vision_cfg, text_cfg) instead of a named one.
    # hf captioner / llm / vlm: an inline transformers config (with its model_type) to build with random weights.
    config: dict[str, Any] | None = None
    # open_clip: a pretrained tag of the architecture ("openai", "laion2b_s34b_b79k") or a checkpoint file path.
    pretrained: str | None = None
    # hf: a Hugging Face Hub id ("openai/clip-vit-base-patch32") or a local directory saved by save_pretrained.
    source: str | None = None
    # hf: a Hub branch, tag or commit to load (None: the default branch); ignored for local directories.
    revision: str | None = None
    # Build the architecture with random weights (tests, demo, throughput benchmarks): outputs are meaningless.
    random_init: bool = False
    # Seed of the random weights: every worker must build the same model.
    seed: int = 0
    # Whether the model may run in float16 on a GPU.
    half: bool = True
    # Where downloaded weights are cached (None: the library default, e.g. $HF_HOME).
    cache_dir: str | None = None
    # clip: the [low, high] image / synthetic-text cosine band the generate stage keeps (the scale is the model's).
    similarity_band: tuple[float, float] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _complete(self) -> ModelSpec:
        if self.family == "open_clip":
            if self.kind != "clip":
                raise ValueError(f"an open_clip model is a clip encoder, not a {self.kind}")
            if (self.architecture is None) == (self.config is None):
                raise ValueError("an open_clip model needs exactly one of 'architecture' and 'config'")
            schema = (self.architecture or "").startswith(("hf-hub:", "local-dir:"))
            if self.pretrained is None and not self.random_init and not schema:
                raise ValueError("an open_clip model needs 'pretrained' (a tag or checkpoint file) or random_init")
            if self.source is not None:
                raise ValueError("'source' is for hf models; use 'architecture' and 'pretrained'")
        elif self.kind == "clip":
            if self.source is None:
                raise ValueError("an hf model needs 'source' (a Hub id or a local directory)")
            if self.architecture is not None or self.config is not None or self.pretrained is not None:
                raise ValueError("an hf model takes 'source' only (not architecture / config / pretrained)")
        else:
            if (self.source is None) == (self.config is None):
                raise ValueError(f"an hf {self.kind} needs exactly one of 'source' and an inline 'config'")
            if self.config is not None and not self.random_init:
                raise ValueError("an inline 'config' has no weights: set random_init: true")
            if self.config is not None and "model_type" not in self.config:
                raise ValueError("an inline transformers 'config' needs its 'model_type'")
            if self.architecture is not None or self.pretrained is not None:
                raise ValueError("an hf model takes 'source' or 'config' (not architecture / pretrained)")
            if self.kind == "vlm" and self.config is not None and self.config["model_type"] not in INLINE_VLM_TYPES:
                raise ValueError(
                    f"an inline vlm config is built for model_type {', '.join(INLINE_VLM_TYPES)} (its processor is "
                    f"made locally), not {self.config['model_type']!r}; name other VLMs by 'source'"
                )
        if self.similarity_band is not None:
            low, high = self.similarity_band
            if self.kind != "clip":
                raise ValueError("similarity_band belongs to clip models")
            if not -1.0 <= low < high <= 1.0:
                raise ValueError(f"similarity_band must be [low, high] with -1 <= low < high <= 1, got {low}, {high}")
        return self


def load_registry(path: str | Path) -> dict[str, ModelSpec]:
    """Read a registry file: ``models: {name: {family: ..., ...}}``; raise RegistryError naming file and entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise RegistryError(f"{path}: cannot read model registry: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise RegistryError(f"{path}: not valid YAML: {e}") from e
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise RegistryError(f"{path}: expected a top-level 'models' mapping of name -> model config")
    specs: dict[str, ModelSpec] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict):
            raise RegistryError(f"{path}: models.{name}: expected a mapping")
        try:
            specs[str(name)] = ModelSpec.model_validate({"name": str(name), **entry})
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or name}: {err['msg']}" for err in e.errors())
            raise RegistryError(f"{path}: models.{name}: {problems}") from None
    return specs


def get_spec(
    registry: Mapping[str, ModelSpec], name: str, where: str = "the model registry", kind: ModelKind | None = None
) -> ModelSpec:
    """The entry ``name``; raise RegistryError listing the known names when it is absent or of another kind."""
    known = sorted(n for n, s in registry.items() if kind is None or s.kind == kind)
    if name not in registry:
        raise RegistryError(f"model {name!r} is not in {where}; known models: {', '.join(known)}")
    spec = registry[name]
    if kind is not None and spec.kind != kind:
        raise RegistryError(f"model {name!r} of {where} is a {spec.kind}, not a {kind}; known: {', '.join(known)}")
    return spec


def check_local_files(spec: ModelSpec) -> None:
    """Raise ModelNotAvailable when a file or directory the entry names does not exist (Hub ids are not checked).

    Run on the driver before any work so that a wrong path stops the job at once instead of failing every task.
    """
    if spec.random_init and spec.config is not None:
        return
    paths: list[tuple[str, str]] = []
    if spec.family == "open_clip":
        arch = spec.architecture or ""
        if arch.startswith("local-dir:"):
            paths.append(("open_clip directory", arch.removeprefix("local-dir:")))
        if spec.pretrained is not None and not spec.random_init and looks_like_path(spec.pretrained):
            paths.append(("checkpoint file", spec.pretrained))
    elif spec.source is not None and looks_like_path(spec.source):
        paths.append(("Hugging Face model directory", spec.source))
    for what, path in paths:
        if not Path(path).expanduser().exists():
            raise ModelNotAvailable(f"model {spec.name!r}: {what} not found: {path}")


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def looks_like_path(value: str) -> bool:
    """Whether a registry value names a file or directory rather than a Hub id or a tag."""
    return value.startswith((".", "/", "~")) or (os.sep in value and Path(value).suffix in WEIGHT_SUFFIXES)


def pick_device(
    policy: DevicePolicy,
    gpu_addresses: Sequence[str],
    cuda_available: bool,
    visible_devices: str | None,
) -> str:
    """The torch device of a task from the GPU addresses Spark assigned to it.

    Spark's addresses are physical GPU indexes; where CUDA_VISIBLE_DEVICES narrows what this process sees
    (YARN / Kubernetes isolation), the address is mapped to its position in that list. Without an assigned GPU,
    ``auto`` uses the process's current CUDA device (all tasks then share it) or the CPU.
    """
    if policy == "cpu":
        return "cpu"
    if gpu_addresses and cuda_available:
        address = gpu_addresses[0].strip()
        visible = [v.strip() for v in (visible_devices or "").split(",") if v.strip()]
        if visible and address in visible:
            return f"cuda:{visible.index(address)}"
        if visible and len(visible) == 1:
            return "cuda:0"  # the only device this process can see is the one assigned to it
        return f"cuda:{int(address)}"
    if cuda_available:
        return "cuda"
    if policy == "cuda":
        raise RuntimeError("device is 'cuda' but no CUDA device is available to this task")
    return "cpu"


def resolve_dtype(precision: Precision, device: torch.device, half_allowed: bool) -> torch.dtype:
    """The torch dtype a model runs in: float32 on CPUs under ``auto``, float16 on GPUs where the entry allows."""
    import torch

    if precision == "fp32" or (device.type == "cpu" and precision == "auto"):
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16" or (precision == "auto" and half_allowed):
        return torch.float16 if device.type != "cpu" else torch.float32
    return torch.float32


# ------------------------------------------------------------------------------------ loading once per worker

_CACHE: dict[Hashable, Any] = {}
_CACHE_LOCK = threading.Lock()


def cached(key: Hashable, load: Callable[[], T]) -> T:
    """``load()`` once per Python process and ``key``, then the same object for every later task of the worker."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load()
        return _CACHE[key]


def cache_key(spec: ModelSpec, *parts: Hashable) -> tuple[Hashable, ...]:
    """A cache key of ``spec`` (its whole entry, so an edited entry loads again) and e.g. device and precision."""
    return (spec.model_dump_json(), *parts)


# The components spaCy pipelines load: every one but NER, which no user needs. The tagger's phrase mining needs the
# lemmatizer; CAT alone does not run it (udfs.sentences.cat_features disables it per call unless it also reads the
# phrases), so one pipeline object per name serves both.
SPACY_EXCLUDE = ("ner",)


def load_spacy(name: str) -> Any:
    """The spaCy pipeline ``name`` (an installed package or a folder) without NER, loaded once per process."""

    def load() -> Any:
        import spacy

        return spacy.load(name, exclude=list(SPACY_EXCLUDE))

    return cached(("spacy", name), load)


# ------------------------------------------------------------------------------------------ OOM batch halving


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is torch running out of (GPU) memory."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def run_halving(
    n: int, max_batch: int, run: Callable[[int, int], T], what: str, device: torch.device
) -> tuple[list[T], int]:
    """``run(start, stop)`` over slices of ``range(n)`` of at most ``max_batch`` rows; on out-of-memory the slice
    is halved and retried (down to one row, whose OOM is raised). Returns the outputs in order and the batch size
    that last ran, which the caller keeps as its new ``max_batch``."""
    import torch

    outputs: list[T] = []
    start = 0
    while start < n:
        size = min(max_batch, n - start)
        try:
            outputs.append(run(start, start + size))
            start += size
        except Exception as e:
            if not is_oom(e) or size == 1:
                raise
            max_batch = max(1, size // 2)
            log.warning("%s: out of memory at batch %d on %s; continuing with %d", what, size, device, max_batch)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return outputs, max_batch


# --------------------------------------------------------------------------- tiny random models of tests / demo

# The alphabet of the locally built tokenizer: printable ASCII, one token per character (no merges), so any text
# round-trips (other characters become <unk>) and every decoded output is valid UTF-8.
TINY_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<|start|>", "<|end|>")
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|start|>{{ message['role'] }}\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def tiny_tokenizer(chat: bool, extra_special: Sequence[str] = ()) -> Any:
    """A character-level fast tokenizer over printable ASCII, built without any download.

    Ids 0-5 are the special tokens (pad, unk, bos ``<s>``, eos ``</s>``, and the chat markers ``<|start|>`` /
    ``<|end|>``); with ``chat`` the tokenizer has a chat template and ``<|end|>`` ends a reply. ``extra_special``
    tokens (a VLM's image markers) get the ids after the alphabet, so the ids above do not move.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_char = {b: c for b, c in zip(range(256), _byte_level_chars(), strict=True) if c in alphabet}
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for b in range(0x20, 0x7F):
        vocab[byte_char[b]] = len(vocab)
    vocab[byte_char[0x0A]] = len(vocab)  # newline, which chat templates use
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>" if chat else "</s>",
    )
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    if chat:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _byte_level_chars() -> list[str]:
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's), in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return [chr(chars[b]) for b in range(256)]


def tiny_token_ids(tokenizer: Any) -> dict[str, int]:
    """Ids of pad / unk / bos / eos and the vocabulary size, to write into an inline config."""
    return {
        "pad_token_id": int(tokenizer.pad_token_id),
        "unk_token_id": int(tokenizer.unk_token_id),
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "vocab_size": len(tokenizer),
    }


def hf_error(spec: ModelSpec, error: Exception) -> ModelNotAvailable:
    """The ModelNotAvailable of a Hugging Face model that failed to load, naming where it was looked for."""
    cache = spec.cache_dir or os.environ.get("HF_HOME", "~/.cache/huggingface")
    return ModelNotAvailable(
        f"model {spec.name!r}: Hugging Face model {spec.source!r} not available "
        f"(not a local directory; looked in the cache {cache} and on the Hub): {error}"
    )


def hf_source(spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The ``from_pretrained`` path of an hf entry and its keyword arguments (cache dir, revision); raises
    ModelNotAvailable for a local-looking path that is not a directory."""
    source = str(spec.source)
    local = Path(source).expanduser()
    if (source.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ModelNotAvailable(f"model {spec.name!r}: Hugging Face model directory not found: {source}")
    kwargs: dict[str, Any] = {"cache_dir": spec.cache_dir}
    if spec.revision is not None and not local.is_dir():
        kwargs["revision"] = spec.revision
    return (str(local) if local.is_dir() else source), kwargs


# ------------------------------------------------------------------------------------------ causal language models


def inline_config(spec: ModelSpec, tokenizer: Any) -> Any:
    """The transformers config of the inline ``config`` of ``spec`` (its ``model_type`` and fields), with the ids
    of the special tokens and the vocabulary size of the locally built ``tokenizer``."""
    from transformers import AutoConfig

    raw = dict(spec.config or {})
    return AutoConfig.for_model(raw.pop("model_type"), **{**raw, **tiny_token_ids(tokenizer)})


def build_causal_lm(spec: ModelSpec, device: str, precision: Precision, chat: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal-LM entry (an ``llm`` or an ``lm``), in eval mode on ``device`` in the dtype
    :func:`resolve_dtype` gives ``precision``; not cached (callers go through :func:`cached`).

    An inline config is built with random weights (seeded) and the locally built tokenizer, with its chat template
    where ``chat``; a Hub id or local directory is loaded with its own tokenizer (the weights in that dtype, or
    random ones with ``random_init``). A model that cannot be found raises ModelNotAvailable.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device)
    dtype = resolve_dtype(precision, dev, spec.half)
    if spec.config is not None:
        tokenizer = tiny_tokenizer(chat=chat)
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(inline_config(spec, tokenizer))
    else:
        source, kwargs = hf_source(spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            if spec.random_init:
                torch.manual_seed(spec.seed)
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source, **kwargs))
            else:
                model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        except OSError as e:
            raise hf_error(spec, e) from e
    return model.to(device=dev, dtype=dtype).eval(), tokenizer
