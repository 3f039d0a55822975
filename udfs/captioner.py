"""Image captioning with a Hugging Face image-to-text model (BLIP-class): batched greedy decoding.

Pure functions over Python batches; no Spark here. Images are decoded exactly as the embed stage decodes them
(:func:`udfs.decode.decode_image`: EXIF orientation, transparency on white, 16-bit scaled, decompression-bomb
limit), so an image the embed stage rejected is rejected here for the same reason. A registry entry of kind
``captioner`` names the model (a Hub id or local directory, e.g. Salesforce/blip-image-captioning-base) or an
inline config built with random weights and the locally built tokenizer of udfs/models.py (tests, demo: its
captions are gibberish). The model is loaded once per Python worker and device; an out-of-memory error halves
the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udfs.decode import DEFAULT_MAX_PIXELS, Rejected, decode_image
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

REASON_EMPTY_CAPTION = "empty_caption"


@dataclass
class Captioner:
    """A loaded image-to-text model with its image processor and tokenizer, on one device."""

    model_id: str
    model: Any
    processor: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    # Largest batch that ran without running out of memory; halved on every out-of-memory error.
    max_batch: int = 1 << 30

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """The processor's pixel values of a batch of RGB images."""
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def caption(self, pixels: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy captions of a batch of pixel values (stripped; special tokens removed)."""
        import torch

        def run(start: int, stop: int) -> list[str]:
            with torch.inference_mode():
                chunk = pixels[start:stop].to(self.device, dtype=self.dtype)
                out = self.model.generate(pixel_values=chunk, max_new_tokens=max_new_tokens, do_sample=False)
            return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

        outputs, self.max_batch = run_halving(int(pixels.shape[0]), self.max_batch, run, self.model_id, self.device)
        return [c for chunk in outputs for c in chunk]


def load_captioner(spec: ModelSpec, device: str, precision: Precision = "auto") -> Captioner:
    """Load a captioner entry onto ``device`` (no caching; see :func:`get_captioner`)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BlipImageProcessor

    dev = torch.device(device)
    if spec.config is not None:
        tokenizer = tiny_tokenizer(chat=False)
        ids = tiny_token_ids(tokenizer)
        raw = dict(spec.config)
        model_type = raw.pop("model_type")
        text = {
            **raw.pop("text_config", {}),
            "vocab_size": ids["vocab_size"],
            "bos_token_id": ids["bos_token_id"],
            "sep_token_id": ids["eos_token_id"],  # BLIP's decoder stops at its sep token
            "eos_token_id": ids["eos_token_id"],
            "pad_token_id": ids["pad_token_id"],
        }
        config = AutoConfig.for_model(model_type, text_config=text, **raw)
        torch.manual_seed(spec.seed)
        model = AutoModelForImageTextToText.from_config(config)
        size = int(config.vision_config.image_size)
        processor = BlipImageProcessor(size={"height": size, "width": size})
    else:
        source, kwargs = hf_source(spec)
        try:
            if spec.random_init:
                torch.manual_seed(spec.seed)
                model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(source, **kwargs))
            else:
                model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
            full = AutoProcessor.from_pretrained(source, **kwargs)
        except OSError as e:
            raise hf_error(spec, e) from e
        processor = getattr(full, "image_processor", full)
        tokenizer = getattr(full, "tokenizer", full)
    dtype = resolve_dtype(precision, dev, spec.half)
    model = model.to(device=dev, dtype=dtype).eval()
    log.info("loaded captioner %s on %s (%s)", spec.name, dev, dtype)
    return Captioner(spec.name, model, processor, tokenizer, dev, dtype)


def get_captioner(spec: ModelSpec, device: str, precision: Precision = "auto") -> Captioner:
    """The captioner of ``spec`` on ``device``, loaded once per Python process and then reused."""
    return cached(cache_key(spec, "captioner", device, precision), lambda: load_captioner(spec, device, precision))


@dataclass
class CaptionBatch:
    """Captions of the accepted ids of one batch, and a reason (and detail) for each rejected id."""

    ids: list[Any]
    captions: list[str]
    rejected_ids: list[Any] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


def caption_images(
    captioner: Captioner,
    items: Iterable[tuple[Any, bytes | None]],
    batch_size: int,
    max_new_tokens: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_threads: int = 1,
) -> Iterator[CaptionBatch]:
    """Caption ``(id, image bytes)`` pairs in batches of ``batch_size``.

    Bytes that do not decode are rejected with the embed stage's reason (udfs.decode REASON_*); a caption that is
    empty once special tokens are removed is rejected as ``empty_caption``.
    """

    def decode(data: bytes | None) -> Any:
        try:
            return decode_image(data, max_pixels)
        except Rejected as r:
            return r

    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="realsyn-caption-decode") as pool:
        chunk: list[tuple[Any, bytes | None]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == batch_size:
                yield _caption_chunk(captioner, chunk, list(pool.map(decode, [d for _, d in chunk])), max_new_tokens)
                chunk = []
        if chunk:
            yield _caption_chunk(captioner, chunk, list(pool.map(decode, [d for _, d in chunk])), max_new_tokens)


def _caption_chunk(
    captioner: Captioner, chunk: list[tuple[Any, bytes | None]], decoded: list[Any], max_new_tokens: int
) -> CaptionBatch:
    batch = CaptionBatch([], [])
    ok = [(key, img) for (key, _), img in zip(chunk, decoded, strict=True) if not isinstance(img, Rejected)]
    for (key, _), img in zip(chunk, decoded, strict=True):
        if isinstance(img, Rejected):
            batch.rejected_ids.append(key)
            batch.reasons.append(img.reason)
            batch.details.append(img.detail)
    if not ok:
        return batch
    captions = captioner.caption(captioner.pixels([img for _, img in ok]), max_new_tokens)
    for (key, _), text in zip(ok, captions, strict=True):
        if text:
            batch.ids.append(key)
            batch.captions.append(text)
        else:
            batch.rejected_ids.append(key)
            batch.reasons.append(REASON_EMPTY_CAPTION)
            batch.details.append(f"the captioner wrote nothing within {max_new_tokens} tokens")
    return batch
