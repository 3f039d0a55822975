"""LLM rewrite: merge an image's retrieved text, caption and tags into one synthetic text.

Pure functions over Python batches; no Spark here. The prompt (system and user message, with a version string)
comes from the config; it is rendered with the model's own chat template. Two backends:

- ``transformers`` (default): a causal LM loaded once per Python worker, left-padded batches (sorted by length to
  waste less padding), greedy decoding, a ``max_new_tokens`` limit, the prompt cut off the output token-wise; an
  out-of-memory error halves the batch.
- ``vllm`` (GPU executors): one vLLM engine per Python worker, the whole partition's prompts handed to it at once
  (it schedules its own batches), greedy sampling with the same token limit. vLLM is an optional dependency
  (``pip install vllm``), imported only when this backend is chosen.

Each output is then checked (:func:`check_output`): invalid UTF-8, an echo of the prompt (stripped; nothing left
is a reject), empty, cut off at the token limit, more words than allowed: each a reject with its own reason.
Registry entries of kind ``llm`` name the model (a Hub id or local directory) or an inline config built with
random weights and the locally built chat tokenizer of udfs/models.py (tests, demo: the text is gibberish).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from udfs.models import (
    ModelSpec,
    Precision,
    build_causal_lm,
    cache_key,
    cached,
    hf_source,
    inline_config,
    run_halving,
    tiny_tokenizer,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

REASON_INVALID_UTF8 = "invalid_utf8"
REASON_EMPTY_OUTPUT = "empty_output"
REASON_PROMPT_ECHO = "prompt_echo"
REASON_TRUNCATED = "truncated"
REASON_OVER_LONG = "over_long"

PLACEHOLDERS = ("{retrieved_text}", "{caption}", "{tags}")
NO_TAGS = "none"

Message = Mapping[str, str]


@dataclass(frozen=True)
class PromptTemplate:
    """The rewrite prompt: a system message and a user message holding {retrieved_text}, {caption} and {tags}."""

    version: str
    system: str
    user: str

    def messages(self, retrieved_text: str, caption: str, tags: Sequence[str]) -> list[dict[str, str]]:
        """The chat of one image (tags joined by commas; ``none`` when the tagger found none)."""
        user = (
            self.user.replace("{retrieved_text}", retrieved_text.strip())
            .replace("{caption}", caption.strip())
            .replace("{tags}", ", ".join(tags) if len(tags) else NO_TAGS)
        )
        chat = [{"role": "system", "content": self.system}] if self.system else []
        return [*chat, {"role": "user", "content": user}]


@dataclass(frozen=True)
class Generation:
    """What the model wrote for one prompt: the text (special tokens removed), its token count, and whether it
    ended by itself (an end-of-sequence token) rather than at the token limit."""

    text: str
    n_tokens: int
    finished: bool


class Backend(Protocol):
    """A loaded LLM that turns chats into generations, in order."""

    model_id: str

    def generate(
        self, chats: Sequence[Sequence[Message]], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """One generation per chat, greedy."""
        ...


def render(tokenizer: Any, chat: Sequence[Message]) -> str:
    """The prompt text of one chat under the tokenizer's chat template, ready for the assistant's reply."""
    return str(tokenizer.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=True))


# --------------------------------------------------------------------------------------------- transformers


@dataclass
class TransformersLLM:
    """A causal LM and its tokenizer (left padding) on one device."""

    model_id: str
    model: Any
    tokenizer: Any
    device: torch.device
    batch_size: int
    # Largest batch that ran without running out of memory; halved on every out-of-memory error.
    max_batch: int = 1 << 30

    def generate(
        self, chats: Sequence[Sequence[Message]], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Greedy generations of ``chats`` in left-padded batches of at most ``batch_size``, longest first."""
        prompts = [render(self.tokenizer, chat) for chat in chats]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), self.batch_size):
            part = order[start : start + self.batch_size]
            texts = [prompts[i] for i in part]
            for i, g in zip(part, self._batch(texts, max_new_tokens, min_new_tokens), strict=True):
                results[i] = g
        return [results[i] for i in range(len(prompts))]

    def _batch(self, prompts: list[str], max_new_tokens: int, min_new_tokens: int) -> list[Generation]:
        import torch

        enc = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        eos = eos_ids(self.model, self.tokenizer)

        def run(lo: int, hi: int) -> list[Generation]:
            ids = enc["input_ids"][lo:hi]
            mask = enc["attention_mask"][lo:hi]
            keep = int(mask.sum(dim=1).max())  # drop the columns that are padding in every row of the slice
            ids, mask = ids[:, -keep:].to(self.device), mask[:, -keep:].to(self.device)
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=False,
                    eos_token_id=eos,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            return [decode_generation(self.tokenizer, row, eos) for row in out[:, keep:].tolist()]

        outputs, self.max_batch = run_halving(len(prompts), self.max_batch, run, self.model_id, self.device)
        return [g for chunk in outputs for g in chunk]


def decode_generation(tokenizer: Any, ids: list[int], eos: Sequence[int]) -> Generation:
    """The Generation of the new token ids of one row: text up to the first end token (special tokens removed),
    tokens counted with that end token, finished when there was one (after it comes only padding)."""
    end = next((i for i, t in enumerate(ids) if t in eos), None)
    kept = ids if end is None else ids[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Generation(text, len(kept) + (0 if end is None else 1), end is not None)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a reply: the generation config's (Llama-3 lists several) and the tokenizer's."""
    found: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for v in value if isinstance(value, list | tuple) else [value]:
            if v is not None and int(v) not in found:
                found.append(int(v))
    return found


def pad_left(tokenizer: Any) -> None:
    """Set ``tokenizer`` up for batched generation: prompts padded on the left (their ends aligned where generation
    starts), with the end token as padding where the model defines no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_transformers_llm(spec: ModelSpec, device: str, precision: Precision, batch_size: int) -> TransformersLLM:
    """Load an llm entry with transformers onto ``device`` (no caching; see :func:`get_llm`)."""
    import torch

    model, tokenizer = build_causal_lm(spec, device, precision, chat=True)
    if tokenizer.chat_template is None:
        raise ValueError(f"model {spec.name!r}: its tokenizer has no chat template (an instruction-tuned model has)")
    pad_left(tokenizer)
    dev = torch.device(device)
    log.info("loaded llm %s on %s (%s)", spec.name, dev, model.dtype)
    return TransformersLLM(spec.name, model, tokenizer, dev, batch_size)


# --------------------------------------------------------------------------------------------- vLLM


@dataclass
class VllmLLM:
    """One vLLM engine (offline ``vllm.LLM``) and its tokenizer's chat template."""

    model_id: str
    engine: Any
    tokenizer: Any
    seed: int

    def generate(
        self, chats: Sequence[Sequence[Message]], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[Generation]:
        """Greedy generations of all ``chats`` in one call (the engine batches them itself)."""
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0,
            max_tokens=max_new_tokens,
            min_tokens=min_new_tokens,
            seed=self.seed,
            skip_special_tokens=True,
        )
        prompts = [render(self.tokenizer, chat) for chat in chats]
        outputs = self.engine.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            best = out.outputs[0]
            results.append(Generation(best.text, len(best.token_ids), best.finish_reason == "stop"))
        return results


def vllm_model_dir(spec: ModelSpec, save_inline: Callable[[Path], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Where vLLM loads ``spec`` from, and how: a Hub id or directory; an inline config (random weights) is
    written to a temporary directory by ``save_inline`` (default: the config with the local chat tokenizer) and
    loaded with dummy (random) weights."""
    if spec.config is None:
        source, kwargs = hf_source(spec)
        extra: dict[str, Any] = {"load_format": "dummy"} if spec.random_init else {}
        if "revision" in kwargs:
            extra["revision"] = kwargs["revision"]
        if spec.cache_dir is not None:
            extra["download_dir"] = spec.cache_dir
        return source, extra
    folder = Path(tempfile.mkdtemp(prefix=f"realsyn-vllm-{spec.name}-"))
    if save_inline is None:
        tokenizer = tiny_tokenizer(chat=True)
        inline_config(spec, tokenizer).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        save_inline(folder)
    return str(folder), {"load_format": "dummy"}


def start_vllm_engine(
    spec: ModelSpec,
    device: str,
    precision: Precision,
    gpu_memory_utilization: float,
    max_model_len: int,
    save_inline: Callable[[Path], None] | None = None,
    **engine_args: Any,
) -> Any:
    """A ``vllm.LLM`` engine for ``spec`` pinned to the task's GPU (:func:`vllm_model_dir` says from where);
    ``engine_args`` go to the engine as they are (a VLM's ``limit_mm_per_prompt``)."""
    try:
        from vllm import LLM
    except ImportError as e:
        raise RuntimeError("generate.backend is 'vllm' but vllm is not installed on this worker") from e
    if not device.startswith("cuda"):
        raise RuntimeError(f"generate.backend is 'vllm' but this task has no GPU (device {device!r})")
    if ":" in device:  # pin the engine (and its worker processes) to the GPU Spark assigned to this task
        index = int(device.split(":", 1)[1])
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
    model, extra = vllm_model_dir(spec, save_inline)
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(
        precision, "auto" if spec.half else "float32"
    )
    return LLM(
        model=model,
        dtype=dtype,
        seed=spec.seed,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        **extra,
        **engine_args,
    )


def load_vllm(
    spec: ModelSpec, device: str, precision: Precision, gpu_memory_utilization: float, max_model_len: int
) -> VllmLLM:
    """Start a vLLM engine for ``spec`` on the task's GPU (no caching; see :func:`get_llm`)."""
    engine = start_vllm_engine(spec, device, precision, gpu_memory_utilization, max_model_len)
    tokenizer = engine.get_tokenizer()
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"model {spec.name!r}: its tokenizer has no chat template (an instruction-tuned model has)")
    log.info("started vLLM engine for %s on %s", spec.name, device)
    return VllmLLM(spec.name, engine, tokenizer, spec.seed)


def get_llm(
    spec: ModelSpec,
    device: str,
    precision: Precision = "auto",
    *,
    backend: str = "transformers",
    batch_size: int = 16,
    gpu_memory_utilization: float = 0.85,
    max_model_len: int = 4096,
) -> Backend:
    """The LLM of ``spec`` on ``device`` with ``backend``, loaded (or its engine started) once per Python process."""
    if backend == "vllm":
        key = cache_key(spec, "vllm", device, precision, gpu_memory_utilization, max_model_len)
        return cached(key, lambda: load_vllm(spec, device, precision, gpu_memory_utilization, max_model_len))
    llm = cached(
        cache_key(spec, "transformers", device, precision),
        lambda: load_transformers_llm(spec, device, precision, batch_size),
    )
    llm.batch_size = batch_size
    return llm


# --------------------------------------------------------------------------------------------- output checks


@dataclass(frozen=True)
class Checked:
    """A generation after the checks: the synthetic text, or a reason (and detail) why there is none."""

    text: str | None
    reason: str | None = None
    detail: str | None = None


def _squash(text: str) -> str:
    return " ".join(text.split())


def strip_echo(text: str, chat: Sequence[Message]) -> str:
    """``text`` without a leading copy of any message of the prompt (whitespace-insensitive), repeatedly."""
    echoes = [_squash(m["content"]) for m in chat if m.get("content", "").strip()]
    out = _squash(text)
    changed = True
    while changed and out:
        changed = False
        for echo in echoes:
            if out.startswith(echo):
                out = out[len(echo) :].lstrip()
                changed = True
    return out


def check_output(
    gen: Generation, chat: Sequence[Message], max_words: int, reject_truncated: bool, max_new_tokens: int
) -> Checked:
    """Keep a generation as a synthetic text, or say why not: invalid UTF-8 (the decoder's replacement character
    or unencodable surrogates), empty, only an echo of the prompt, cut off at ``max_new_tokens`` (when
    ``reject_truncated``), more than ``max_words`` words. The kept text has its whitespace collapsed."""
    try:
        gen.text.encode("utf-8")
        valid = "\ufffd" not in gen.text
    except UnicodeEncodeError:
        valid = False
    if not valid:
        return Checked(None, REASON_INVALID_UTF8, "the model's tokens do not decode to valid UTF-8")
    if not gen.text.strip():
        return Checked(None, REASON_EMPTY_OUTPUT, f"{gen.n_tokens} tokens, no visible text")
    text = strip_echo(gen.text, chat)
    if not text:
        return Checked(None, REASON_PROMPT_ECHO, "the output only repeats the prompt")
    if reject_truncated and not gen.finished:
        return Checked(None, REASON_TRUNCATED, f"no end of text within max_new_tokens = {max_new_tokens}")
    words = len(text.split())
    if words > max_words:
        return Checked(None, REASON_OVER_LONG, f"{words} words > max_output_words = {max_words}")
    return Checked(text)
