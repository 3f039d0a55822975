"""Vision-language generation: one multimodal chat model writes an image's synthetic text in one pass.

The model gets the image, the image's top retrieved text (and, where the prompt asks for them, its tags) under a
versioned prompt, and writes the text that the ``pipeline`` mode gets from captioner + tagger + LLM. Pure functions
over Python batches; no Spark here. Images are decoded by the embed stage's decoder (:func:`udfs.decode.decode_image`,
so an undecodable image is rejected with the same reason) and scaled down to at most ``image_pixels`` pixels before
the model's processor sees them; the output goes through the LLM rewrite's checks (:func:`udfs.llm.check_output`).
Two backends:

- ``transformers`` (default): ``AutoProcessor`` + ``AutoModelForImageTextToText`` (Qwen2-VL and other
  image-text-to-text models) loaded once per Python worker, the chat rendered with the processor's chat template
  (an image item before the user's text), left-padded batches of similar image sizes, greedy decoding; an
  out-of-memory error halves the batch.
- ``vllm`` (GPU executors): one vLLM engine per Python worker, every request of the Arrow batch handed to it at
  once as ``{"prompt": ..., "multi_modal_data": {"image": <PIL image>}}`` (:func:`vllm_inputs`); vLLM is imported
  only when this backend is chosen.

Registry entries of kind ``vlm`` name the model (a Hub id or local directory, e.g. Qwen/Qwen2-VL-2B-Instruct) or an
inline Qwen2-VL config built with random weights and a processor made here (the character tokenizer of
udfs/models.py with Qwen2-VL's image tokens, a chat template, an image processor of the config's patch sizes): its
texts are gibberish and only exercise the code paths.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udfs.decode import DEFAULT_MAX_PIXELS, Rejected, decode_image
from udfs.llm import (
    NO_TAGS,
    Generation,
    Message,
    check_output,
    decode_generation,
    eos_ids,
    pad_left,
    start_vllm_engine,
)
from udfs.models import (
    ModelSpec,
    Precision,
    cache_key,
    cached,
    hf_error,
    hf_source,
    resolve_dtype,
    run_halving,
    tiny_token_ids,
    tiny_tokenizer,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# The user prompt must hold the first and may hold the second; nothing else is filled in (no caption: the model
# sees the image itself).
REQUIRED_PLACEHOLDERS = ("{retrieved_text}",)
OPTIONAL_PLACEHOLDERS = ("{tags}",)
PLACEHOLDER = re.compile(r"\{[A-Za-z_]+\}")

# Qwen2-VL's image and video markers, added to the tiny tokenizer of an inline config (ids after its alphabet).
QWEN2_VL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# The tiny models' chat template (udfs.models.TINY_CHAT_TEMPLATE) with content items; an image item becomes
# Qwen2-VL's markers, which the processor expands to one <|image_pad|> per merged patch.
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def prompt_problems(user: str) -> list[str]:
    """What is wrong with a VLM user prompt: a required placeholder missing, or one that is never filled in."""
    found = set(PLACEHOLDER.findall(user))
    problems = [f"must hold {p}" for p in REQUIRED_PLACEHOLDERS if p not in found]
    unknown = sorted(found - set(REQUIRED_PLACEHOLDERS) - set(OPTIONAL_PLACEHOLDERS))
    if unknown:
        allowed = ", ".join((*REQUIRED_PLACEHOLDERS, *OPTIONAL_PLACEHOLDERS))
        problems.append(
            f"holds {', '.join(unknown)}, which vlm mode does not fill in (it fills {allowed}; the model sees the "
            "image itself, there is no caption)"
        )
    return problems


@dataclass(frozen=True)
class VlmPrompt:
    """The VLM prompt: a system message and a user message holding {retrieved_text} (and optionally {tags})."""

    version: str
    system: str
    user: str

    @property
    def uses_tags(self) -> bool:
        """Whether the user message asks for the image's tags (then the stage runs the tagger first)."""
        return "{tags}" in self.user

    def messages(self, retrieved_text: str, tags: Sequence[str] = ()) -> list[dict[str, str]]:
        """The text chat of one image (tags joined by commas; ``none`` when the tagger found none): what the
        output checks compare an echo with. :func:`with_image` turns it into the model's multimodal chat."""
        user = self.user.replace("{retrieved_text}", retrieved_text.strip()).replace(
            "{tags}", ", ".join(tags) if len(tags) else NO_TAGS
        )
        chat = [{"role": "system", "content": self.system}] if self.system else []
        return [*chat, {"role": "user", "content": user}]


def with_image(chat: Sequence[Message]) -> list[dict[str, Any]]:
    """``chat`` as content items, the image item first in the last user message (processors' chat format)."""
    last_user = max(i for i, m in enumerate(chat) if m["role"] == "user")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(chat):
        items: list[dict[str, str]] = [{"type": "image"}] if i == last_user else []
        out.append({"role": m["role"], "content": [*items, {"type": "text", "text": m["content"]}]})
    return out


def render(processor: Any, chat: Sequence[Message]) -> str:
    """The prompt text of one image's chat under the processor's chat template, ready for the reply; the image
    stands there as the model's image markers (the processor or vLLM expands them)."""
    return str(processor.apply_chat_template(with_image(chat), tokenize=False, add_generation_prompt=True))


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """``image`` scaled down (aspect kept, bicubic) to at most ``max_pixels`` pixels; smaller ones as they are."""
    from PIL import Image

    width, height = image.size
    if width * height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (width * height))
    size = (max(1, math.floor(width * scale)), max(1, math.floor(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class VlmRequest:
    """One image and its text chat."""

    image: Image.Image
    chat: Sequence[Message]


class VlmBackend(Protocol):
    """A loaded VLM that turns (image, chat) requests into generations, in order."""

    model_id: str

    def generate(
        self, requests: Sequence[VlmRequest], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """One generation per request, greedy."""
        ...


# --------------------------------------------------------------------------------------------- transformers


@dataclass
class TransformersVLM:
    """An image-text-to-text model and its processor (left padding) on one device."""

    model_id: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    # Largest batch that ran without running out of memory; halved on every out-of-memory error.
    max_batch: int = 1 << 30

    def generate(
        self, requests: Sequence[VlmRequest], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Greedy generations in left-padded batches of at most ``batch_size``, largest images first (similar
        image sizes give similar prompt lengths: less padding)."""
        prompts = [render(self.processor, r.chat) for r in requests]
        area = [r.image.size[0] * r.image.size[1] for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (-area[i], -len(prompts[i]), i))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), self.batch_size):
            part = order[start : start + self.batch_size]
            gens = self._batch(
                [prompts[i] for i in part], [requests[i].image for i in part], max_new_tokens, min_new_tokens
            )
            results.update(zip(part, gens, strict=True))
        return [results[i] for i in range(len(requests))]

    def _batch(
        self, prompts: list[str], images: list[Image.Image], max_new_tokens: int, min_new_tokens: int
    ) -> list[Generation]:
        import torch

        tokenizer = self.processor.tokenizer
        eos = eos_ids(self.model, tokenizer)

        def run(lo: int, hi: int) -> list[Generation]:
            # Processed per slice: pixel values of variable-resolution models (Qwen2-VL) are not one row per image.
            enc = self.processor(text=prompts[lo:hi], images=images[lo:hi], padding=True, return_tensors="pt")
            enc = enc.to(self.device, dtype=self.dtype)
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=tokenizer.pad_token_id,
                )
            width = int(enc["input_ids"].shape[1])
            return [decode_generation(tokenizer, row, eos) for row in out[:, width:].tolist()]

        outputs, self.max_batch = run_halving(len(prompts), self.max_batch, run, self.model_id, self.device)
        return [g for chunk in outputs for g in chunk]


def tiny_processor(spec: ModelSpec) -> Any:
    """The processor of an inline Qwen2-VL entry, built without any download: the character tokenizer with
    Qwen2-VL's image tokens, :data:`TINY_VLM_CHAT_TEMPLATE`, and image / video processors of the config's patch,
    merge and temporal sizes (no upscaling below one merged patch: the smallest image is one image token)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    vision = dict((spec.config or {}).get("vision_config", {}))
    patch = int(vision.get("patch_size", 14))
    merge = int(vision.get("spatial_merge_size", 2))
    temporal = int(vision.get("temporal_patch_size", 2))
    tokenizer = tiny_tokenizer(chat=True, extra_special=QWEN2_VL_TOKENS)
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=(patch * merge) ** 2, patch_size=patch, merge_size=merge, temporal_patch_size=temporal
        ),
        video_processor=Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge, temporal_patch_size=temporal),
        tokenizer=tokenizer,
        chat_template=TINY_VLM_CHAT_TEMPLATE,
    )


def inline_vlm_config(spec: ModelSpec, tokenizer: Any) -> Any:
    """The transformers config of an inline Qwen2-VL entry: its fields, the tiny tokenizer's vocabulary size and
    special-token ids in the text config, and the ids of its image markers."""
    from transformers import AutoConfig

    raw = dict(spec.config or {})
    model_type = raw.pop("model_type")
    text = {**raw.pop("text_config", {}), **tiny_token_ids(tokenizer)}
    start, end, image, video = (int(tokenizer.convert_tokens_to_ids(t)) for t in QWEN2_VL_TOKENS)
    return AutoConfig.for_model(
        model_type,
        text_config=text,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        **raw,
    )


def load_transformers_vlm(spec: ModelSpec, device: str, precision: Precision, batch_size: int) -> TransformersVLM:
    """Load a vlm entry with transformers onto ``device`` (no caching; see :func:`get_vlm`)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    dev = torch.device(device)
    dtype = resolve_dtype(precision, dev, spec.half)
    if spec.config is not None:
        processor = tiny_processor(spec)
        torch.manual_seed(spec.seed)
        model = AutoModelForImageTextToText.from_config(inline_vlm_config(spec, processor.tokenizer))
    else:
        source, kwargs = hf_source(spec)
        try:
            processor = AutoProcessor.from_pretrained(source, **kwargs)
            if spec.random_init:
                torch.manual_seed(spec.seed)
                model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(source, **kwargs))
            else:
                model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, **kwargs)
        except OSError as e:
            raise hf_error(spec, e) from e
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"model {spec.name!r}: its processor has no chat template (an instruction-tuned VLM has)")
    pad_left(processor.tokenizer)
    model = model.to(device=dev, dtype=dtype).eval()
    log.info("loaded vlm %s on %s (%s)", spec.name, dev, dtype)
    return TransformersVLM(spec.name, model, processor, dev, dtype, batch_size)


# --------------------------------------------------------------------------------------------- vLLM


def vllm_inputs(processor: Any, requests: Sequence[VlmRequest]) -> list[dict[str, Any]]:
    """vLLM's multimodal prompts of ``requests``: the rendered chat (image markers in place) and the image."""
    return [{"prompt": render(processor, r.chat), "multi_modal_data": {"image": r.image}} for r in requests]


@dataclass
class VllmVLM:
    """One vLLM engine (offline ``vllm.LLM``) and the processor whose chat template renders the prompts."""

    model_id: str
    engine: Any
    processor: Any
    seed: int

    def generate(
        self, requests: Sequence[VlmRequest], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Greedy generations of all ``requests`` in one call (the engine batches them itself)."""
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            min_tokens=min_new_tokens,
            seed=self.seed,
            skip_special_tokens=True,
        )
        outputs = self.engine.generate(vllm_inputs(self.processor, requests), params, use_tqdm=False)
        return [
            Generation(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop")
            for o in outputs
        ]


def load_vllm_vlm(
    spec: ModelSpec, device: str, precision: Precision, gpu_memory_utilization: float, max_model_len: int
) -> VllmVLM:
    """Start a vLLM engine for a vlm entry on the task's GPU, one image per prompt (no caching; see
    :func:`get_vlm`). An inline config is written with its locally built processor and loaded with dummy weights."""
    if spec.config is not None:
        processor = tiny_processor(spec)

        def save(folder: Path) -> None:
            inline_vlm_config(spec, processor.tokenizer).save_pretrained(folder)
            processor.save_pretrained(folder)

        engine = start_vllm_engine(
            spec, device, precision, gpu_memory_utilization, max_model_len, save, limit_mm_per_prompt={"image": 1}
        )
    else:
        from transformers import AutoProcessor

        engine = start_vllm_engine(
            spec, device, precision, gpu_memory_utilization, max_model_len, limit_mm_per_prompt={"image": 1}
        )
        source, kwargs = hf_source(spec)
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    if getattr(processor, "chat_template", None) is None:
        raise ValueError(f"model {spec.name!r}: its processor has no chat template (an instruction-tuned VLM has)")
    log.info("started vLLM engine for %s on %s", spec.name, device)
    return VllmVLM(spec.name, engine, processor, spec.seed)


def get_vlm(
    spec: ModelSpec,
    device: str,
    precision: Precision = "auto",
    *,
    backend: str = "transformers",
    batch_size: int = 8,
    gpu_memory_utilization: float = 0.85,
    max_model_len: int = 4096,
) -> VlmBackend:
    """The VLM of ``spec`` on ``device`` with ``backend``, loaded (or its engine started) once per Python process."""
    if backend == "vllm":
        key = cache_key(spec, "vlm-vllm", device, precision, gpu_memory_utilization, max_model_len)
        return cached(key, lambda: load_vllm_vlm(spec, device, precision, gpu_memory_utilization, max_model_len))
    vlm = cached(
        cache_key(spec, "vlm-transformers", device, precision),
        lambda: load_transformers_vlm(spec, device, precision, batch_size),
    )
    vlm.batch_size = batch_size
    return vlm


# --------------------------------------------------------------------------------------------- the batch function


@dataclass(frozen=True)
class VlmLimits:
    """What bounds one generation and its checks: token limits, the output checks of udfs.llm, the decoder's
    pixel limit (``max_pixels``: more is a reject) and the pixels the model sees (``image_pixels``: scaled down)."""

    max_new_tokens: int
    min_new_tokens: int = 0
    max_words: int = 120
    reject_truncated: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_pixels: int = 200_704


@dataclass(frozen=True)
class Written:
    """The outcome of one image: the synthetic text, or a reason (and detail) why there is none; tokens generated."""

    key: Any
    text: str | None
    reason: str | None
    detail: str | None
    n_tokens: int


def write_texts(
    vlm: VlmBackend,
    rows: Sequence[tuple[Any, bytes | None, str, Sequence[str]]],
    prompt: VlmPrompt,
    limits: VlmLimits,
    decode_threads: int = 1,
) -> list[Written]:
    """One :class:`Written` per ``(key, image bytes, retrieved text, tags)`` row, in order.

    Bytes the decoder refuses are rejected with its reason (udfs.decode REASON_*) and never reach the model; the
    rest go to ``vlm.generate`` in one call and each output through :func:`udfs.llm.check_output` (invalid UTF-8,
    empty, prompt echo, truncated, over-long).
    """

    def decode(data: bytes | None) -> Image.Image | Rejected:
        try:
            return fit_pixels(decode_image(data, limits.max_pixels), limits.image_pixels)
        except Rejected as r:
            return r

    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="realsyn-vlm-decode") as pool:
        images = list(pool.map(decode, [content for _, content, _, _ in rows]))
    out: list[Written | None] = [None] * len(rows)
    todo: list[int] = []
    requests: list[VlmRequest] = []
    for i, ((key, _, text, tags), image) in enumerate(zip(rows, images, strict=True)):
        if isinstance(image, Rejected):
            out[i] = Written(key, None, image.reason, image.detail, 0)
        else:
            todo.append(i)
            requests.append(VlmRequest(image, prompt.messages(text, tags)))
    if requests:
        gens = vlm.generate(requests, limits.max_new_tokens, limits.min_new_tokens)
        for i, request, gen in zip(todo, requests, gens, strict=True):
            checked = check_output(gen, request.chat, limits.max_words, limits.reject_truncated, limits.max_new_tokens)
            out[i] = Written(rows[i][0], checked.text, checked.reason, checked.detail, gen.n_tokens)
    return [w for w in out if w is not None]
