"""CLIP-style embedding of image bytes and sentences: model loading, preprocessing, batched inference.

Pure functions over Python / numpy batches; no Spark here. Image bytes are decoded by udfs.decode (Pillow, or
JPEGs on the model's device). The Spark stage (realsyn/stages/embed.py) wraps
:func:`embed_images` and :func:`embed_texts` in iterator UDFs and picks the device from the task's resources.

Models come from the registry of udfs/models.py (conf/models.yaml, entries of kind ``clip``): open_clip models by
name plus a pretrained tag or checkpoint file, Hugging Face CLIP / SigLIP by id or local directory, and small
configs with random weights for tests and the offline demo (their vectors are meaningless as embeddings). A model
is loaded once per Python worker and device (udfs.models.cached), then reused by every task that worker runs;
an out-of-memory error halves the batch (udfs.models.run_halving).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from udfs.decode import DEFAULT_MAX_PIXELS, Jpeg, Rejected, decode_image, decode_jpegs, route_jpeg, tensor_decoder_works
from udfs.models import WEIGHT_SUFFIXES as _WEIGHT_SUFFIXES
from udfs.models import ModelNotAvailable, ModelSpec, Precision, cache_key, cached, resolve_dtype, run_halving
from udfs.models import looks_like_path as _looks_like_path

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# How image bytes become model input: "pil" decodes with Pillow and runs the model's own transform on CPU threads
# (pixel-exact); "torch" decodes JPEGs with torchvision on the model's device (nvJPEG on a GPU) and resizes them
# there with the transform's own steps on tensors, other formats still going through Pillow; "auto" is "torch"
# on a GPU and "pil" on a CPU.
ImageDecode = Literal["auto", "pil", "torch"]

# Reject reasons of texts (one per rejected row); those of images are udfs.decode's.
REASON_EMPTY_TEXT = "empty_text"
REASON_NON_FINITE = "non_finite_embedding"


# ------------------------------------------------------------------------------------------------- the models


def _slice(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def _to_device(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return inputs.to(device, non_blocking=True)


@dataclass
class Encoder:
    """A loaded model with its own image transform and tokenizer, ready to run batches on one device."""

    model_id: str
    model: Any
    device: torch.device
    dtype: torch.dtype
    image_transform: Callable[[Image.Image], torch.Tensor]
    tokenize: Callable[[list[str]], Any]
    encode_image_fn: Callable[[torch.Tensor], torch.Tensor]
    encode_text_fn: Callable[[Any], torch.Tensor]
    image_size: int
    context_length: int
    # When set, ``image_transform`` stops before ToTensor + Normalize (uint8 HWC out) and these finish the
    # transform on the model's device, batched: the same float32 arithmetic, a quarter of the bytes to move.
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    # The model's own transform, whole (PIL image -> normalised float tensor).
    model_transform: Callable[[Image.Image], torch.Tensor] | None = None
    # The transform's resize and crop, for (3, H, W) uint8 tensors on any device; None when the transform has
    # other steps (then every image is decoded with Pillow).
    tensor_geometry: ResizeCrop | None = None
    # Largest batch that ran without running out of memory; halved on every out-of-memory error.
    max_batch: int = 1 << 30
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _forward(self, fn: Callable[[Any], torch.Tensor], inputs: Any, n: int) -> np.ndarray:
        import torch

        def run(start: int, stop: int) -> np.ndarray:
            with torch.inference_mode():
                chunk = _to_device(_slice(inputs, start, stop), self.device)
                if isinstance(chunk, torch.Tensor) and chunk.dtype == torch.uint8:
                    chunk = self._normalize(chunk)
                if isinstance(chunk, torch.Tensor) and chunk.is_floating_point():
                    chunk = chunk.to(self.dtype)
                out = torch.nn.functional.normalize(fn(chunk).float(), dim=-1)
                return out.cpu().numpy().astype(np.float32, copy=False)

        outputs, self.max_batch = run_halving(n, self.max_batch, run, self.model_id, self.device)
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outputs, axis=0)

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """ToTensor + Normalize of a uint8 (N, H, W, C) batch, as torchvision does them, on the device.

        The same operations in the same order as torchvision (so bit-identical), on a contiguous NCHW copy and
        in place: on a permuted (channels-last) view the element-wise steps ran ~10x slower on a CPU.
        """
        import torch

        assert self.pixel_mean is not None and self.pixel_std is not None
        x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
        mean = torch.tensor(self.pixel_mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.pixel_std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised float32 vectors of a batch of preprocessed images (N, 3, H, W)."""
        return self._forward(self.encode_image_fn, pixels, int(pixels.shape[0]))

    def encode_texts(self, tokens: Any) -> np.ndarray:
        """L2-normalised float32 vectors of a batch of tokenized texts (as returned by ``tokenize``)."""
        first = next(iter(tokens.values())) if isinstance(tokens, Mapping) else tokens
        return self._forward(self.encode_text_fn, tokens, int(first.shape[0]))

    def preprocess(self, data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = False) -> Any:
        """Decode and transform one image exactly as the model's own preprocessing does (raises Rejected)."""
        img = decode_image(data, max_pixels, 2 * self.image_size if draft else None)
        return self.image_transform(img)


def _register_inline_open_clip(spec: ModelSpec) -> str:
    import open_clip

    name = f"realsyn-{spec.name}"
    if name not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="realsyn-open-clip-"))
        (folder / f"{name}.json").write_text(json.dumps(spec.config), encoding="utf-8")
        open_clip.add_model_config(folder / f"{name}.json")
    return name


def split_open_clip_transform(
    transform: Any,
) -> tuple[Callable[[Image.Image], torch.Tensor], tuple[float, ...], tuple[float, ...]] | None:
    """Split a torchvision Compose that ends in ToTensor + Normalize into a PIL part (giving uint8 HWC tensors)
    and the normalisation constants; None when the transform has another shape (it then runs whole on the CPU).
    """
    import torch

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or type(steps[-1]).__name__ != "Normalize":
        return None
    if type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    head = steps[:-2]
    mean = tuple(float(v) for v in steps[-1].mean)
    std = tuple(float(v) for v in steps[-1].std)

    def to_uint8(img: Image.Image) -> torch.Tensor:
        for step in head:
            img = step(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))

    return to_uint8, mean, std


@dataclass(frozen=True)
class ResizeCrop:
    """torchvision's Resize then CenterCrop on tensors, for a batch of images of different sizes.

    The same operations torchvision runs on a float tensor (antialiased interpolation, clamp for bicubic, round
    to uint8), with one interpolation per image and the clamp and rounding once per batch: a few kernel
    launches per image instead of the dozen that calling the two modules makes.
    """

    size: tuple[int, ...]  # one value: the shorter side; two: (height, width)
    max_size: int | None
    mode: str  # "bicubic", "bilinear" or "nearest"
    antialias: bool
    crop: tuple[int, int]  # (height, width)

    @classmethod
    def of(cls, transform: Any) -> ResizeCrop | None:
        """The Resize and CenterCrop of a torchvision Compose ending in ToTensor + Normalize; None for any other
        shape (open_clip's RGB mode check may sit anywhere among them)."""
        steps = list(getattr(transform, "transforms", []))
        if len(steps) < 4 or type(steps[-1]).__name__ != "Normalize":
            return None
        head = [s for s in steps[:-2] if not (type(s).__name__ == "MaybeConvertMode" and s.mode == "RGB")]
        if [type(s).__name__ for s in head] != ["Resize", "CenterCrop"]:
            return None
        resize, crop = head
        mode = str(getattr(resize.interpolation, "value", resize.interpolation))
        if mode not in ("bicubic", "bilinear", "nearest"):
            return None
        size = (resize.size,) if isinstance(resize.size, int) else tuple(int(v) for v in resize.size)
        height, width = (crop.size, crop.size) if isinstance(crop.size, int) else crop.size
        antialias = bool(resize.antialias) and mode != "nearest"
        return cls(size, resize.max_size, mode, antialias, (int(height), int(width)))

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) torchvision's Resize gives an image of ``height`` x ``width``."""
        if len(self.size) == 2:
            return self.size[0], self.size[1]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size[0], int(self.size[0] * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, C, crop height, crop width) uint8 from (C, H, W) uint8 tensors on one device."""
        import torch
        from torchvision.transforms.functional import center_crop

        crop_h, crop_w = self.crop
        device = images[0].device
        out = torch.empty((len(images), images[0].shape[0], crop_h, crop_w), dtype=torch.float32, device=device)
        align = False if self.mode in ("bilinear", "bicubic") else None
        for i, image in enumerate(images):
            new_h, new_w = self.resized_size(int(image.shape[-2]), int(image.shape[-1]))
            resized = torch.nn.functional.interpolate(
                image[None].float(), size=(new_h, new_w), mode=self.mode, align_corners=align, antialias=self.antialias
            )[0]
            if new_h >= crop_h and new_w >= crop_w:
                top, left = round((new_h - crop_h) / 2.0), round((new_w - crop_w) / 2.0)
                out[i] = resized[:, top : top + crop_h, left : left + crop_w]
            else:  # smaller than the crop: torchvision pads with zeros
                out[i] = center_crop(resized, [crop_h, crop_w])
        if self.mode == "bicubic":
            out.clamp_(0, 255)
        return out.round_().to(torch.uint8)


def _load_open_clip(spec: ModelSpec) -> tuple[Any, Any, Any, int, int]:
    import open_clip
    import torch

    arch = _register_inline_open_clip(spec) if spec.config is not None else str(spec.architecture)
    if arch.startswith("local-dir:") and not Path(arch.removeprefix("local-dir:")).is_dir():
        raise ModelNotAvailable(
            f"model {spec.name!r}: open_clip directory not found: {arch.removeprefix('local-dir:')}"
        )
    pretrained = None if spec.random_init else spec.pretrained
    if pretrained is not None and (_looks_like_path(pretrained) or Path(pretrained).suffix in _WEIGHT_SUFFIXES):
        if not Path(pretrained).expanduser().is_file():
            raise ModelNotAvailable(f"model {spec.name!r}: checkpoint file not found: {pretrained}")
        pretrained = str(Path(pretrained).expanduser())
    elif pretrained is not None and not open_clip.get_pretrained_cfg(arch, pretrained):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ModelNotAvailable(
            f"model {spec.name!r}: open_clip has no pretrained tag {pretrained!r} for {arch!r} (known: {known})"
        )
    torch.manual_seed(spec.seed)
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, cache_dir=spec.cache_dir, load_weights=not spec.random_init
        )
    except (RuntimeError, OSError, ValueError) as e:
        where = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
        looked = where.get("hf_hub") or where.get("url") or arch
        cache = spec.cache_dir or os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelNotAvailable(
            f"model {spec.name!r}: weights of open_clip {arch!r} / {pretrained!r} not available "
            f"(looked for {looked!r} in the cache {cache} and online): {e}"
        ) from e
    tokenizer = open_clip.get_tokenizer(arch, cache_dir=spec.cache_dir)
    context_length = int(getattr(tokenizer, "context_length", None) or model.context_length)
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, tuple | list) else size)
    return model, transform, tokenizer, context_length, image_size


def _load_hf(spec: ModelSpec) -> tuple[Any, Any, Any, int, int]:
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    source = str(spec.source)
    local = Path(source)
    looks_local = source.startswith((".", "/", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise ModelNotAvailable(f"model {spec.name!r}: Hugging Face model directory not found: {source}")
    try:
        if spec.random_init:
            torch.manual_seed(spec.seed)
            model = AutoModel.from_config(AutoConfig.from_pretrained(source, cache_dir=spec.cache_dir))
        else:
            model = AutoModel.from_pretrained(source, cache_dir=spec.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=spec.cache_dir)
        processor = AutoImageProcessor.from_pretrained(source, cache_dir=spec.cache_dir)
    except OSError as e:
        cache = spec.cache_dir or os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelNotAvailable(
            f"model {spec.name!r}: Hugging Face model {source!r} not available "
            f"(not a local directory; looked in the cache {cache} and on the Hub): {e}"
        ) from e
    text_cfg = model.config.text_config
    context_length = int(text_cfg.max_position_embeddings)
    image_size = int(model.config.vision_config.image_size)
    padding = "max_length"  # SigLIP was trained with max-length padding; CLIP pools at EOS, so padding is neutral

    def tokenize(texts: list[str]) -> Any:
        enc = tokenizer(texts, padding=padding, truncation=True, max_length=context_length, return_tensors="pt")
        keep = {"input_ids"} | (
            {"attention_mask"} if "attention_mask" in enc and "Siglip" not in type(model).__name__ else set()
        )
        return {k: v for k, v in enc.items() if k in keep}

    def transform(img: Image.Image) -> torch.Tensor:
        return processor(images=img, return_tensors="pt")["pixel_values"][0]

    return model, transform, tokenize, context_length, image_size


def _features(out: Any) -> torch.Tensor:
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_encoder(spec: ModelSpec, device: str, precision: Precision = "auto") -> Encoder:
    """Load ``spec`` onto ``device`` (no caching; see :func:`get_encoder`)."""
    import torch

    dev = torch.device(device)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    geometry: ResizeCrop | None = None
    if spec.family == "open_clip":
        model, transform, tokenizer, context_length, image_size = _load_open_clip(spec)
        whole = transform
        split = split_open_clip_transform(transform)
        if split is not None:
            transform, mean, std = split
            geometry = ResizeCrop.of(whole)

        def tokenize(texts: list[str]) -> Any:
            return tokenizer(texts, context_length=context_length)

        encode_image_fn: Callable[[torch.Tensor], torch.Tensor] = model.encode_image
        encode_text_fn: Callable[[Any], torch.Tensor] = model.encode_text
    else:
        model, transform, tokenize, context_length, image_size = _load_hf(spec)
        whole = transform

        def encode_image_fn(pixels: torch.Tensor) -> torch.Tensor:
            return _features(model.get_image_features(pixel_values=pixels))

        def encode_text_fn(tokens: Any) -> torch.Tensor:
            return _features(model.get_text_features(**tokens))

    dtype = resolve_dtype(precision, dev, spec.half)
    model = model.to(device=dev, dtype=dtype).eval()
    log.info("loaded model %s on %s (%s)", spec.name, dev, dtype)
    return Encoder(
        model_id=spec.name,
        model=model,
        device=dev,
        dtype=dtype,
        image_transform=transform,
        tokenize=tokenize,
        encode_image_fn=encode_image_fn,
        encode_text_fn=encode_text_fn,
        image_size=image_size,
        context_length=context_length,
        pixel_mean=mean,
        pixel_std=std,
        model_transform=whole,
        tensor_geometry=geometry,
    )


def get_encoder(spec: ModelSpec, device: str, precision: Precision = "auto") -> Encoder:
    """The encoder of ``spec`` on ``device``, loaded once per Python process and then reused."""
    key = cache_key(spec, "encoder", device, precision)
    return cached(key, lambda: load_encoder(spec, device, precision))


# --------------------------------------------------------------------------------------------- batch pipelines


@dataclass
class EmbeddedBatch:
    """Result of one model batch: vectors of the accepted ids, and a reason for each rejected id."""

    ids: list[Any]
    vectors: np.ndarray
    rejected_ids: list[Any] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    ids: list[Any]
    inputs: Any
    rejected_ids: list[Any]
    reasons: list[str]
    details: list[str]


def _chunks(items: Iterable[tuple[Any, Any]], size: int) -> Iterator[list[tuple[Any, Any]]]:
    chunk: list[tuple[Any, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _on_host(inputs: Any) -> bool:
    tensors = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    return all(t.device.type == "cpu" for t in tensors)


def _pipelined(
    chunks: Iterator[list[tuple[Any, Any]]],
    prepare: Callable[[list[tuple[Any, Any]]], _Prepared],
    run: Callable[[Any], np.ndarray],
    prefetch: int,
    pin: bool,
) -> Iterator[EmbeddedBatch]:
    """Prepare up to ``prefetch`` batches on a CPU thread while the model runs the current one."""

    def prepare_pinned(chunk: list[tuple[Any, Any]]) -> _Prepared:
        prepared = prepare(chunk)
        if pin and prepared.inputs is not None and _on_host(prepared.inputs):
            if isinstance(prepared.inputs, Mapping):
                prepared.inputs = {k: v.pin_memory() for k, v in prepared.inputs.items()}
            else:
                prepared.inputs = prepared.inputs.pin_memory()
        return prepared

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="realsyn-prefetch") as pool:
        pending: deque[Future[_Prepared]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_pinned, chunk))
            if len(pending) > prefetch:
                yield _finish(pending.popleft().result(), run)
        while pending:
            yield _finish(pending.popleft().result(), run)


def _finish(prepared: _Prepared, run: Callable[[Any], np.ndarray]) -> EmbeddedBatch:
    """Run the model on a prepared batch; a vector that is not finite (an fp16 overflow) becomes a reject."""
    vectors = np.zeros((0, 0), dtype=np.float32) if prepared.inputs is None else run(prepared.inputs)
    finite = np.asarray(np.isfinite(vectors).all(axis=1) if vectors.size else np.ones(len(vectors)), dtype=bool)
    if finite.all():
        return EmbeddedBatch(prepared.ids, vectors, prepared.rejected_ids, prepared.reasons, prepared.details)
    flags = [bool(ok) for ok in finite]
    bad = [key for key, ok in zip(prepared.ids, flags, strict=True) if not ok]
    return EmbeddedBatch(
        [key for key, ok in zip(prepared.ids, flags, strict=True) if ok],
        vectors[finite],
        prepared.rejected_ids + bad,
        prepared.reasons + [REASON_NON_FINITE] * len(bad),
        prepared.details
        + ["the model's output holds NaN or infinite values (overflow at the model's precision?)"] * len(bad),
    )


def image_decoder(encoder: Encoder, decode: ImageDecode) -> Literal["pil", "torch"]:
    """Which way :func:`embed_images` decodes for ``encoder`` (see ImageDecode); ValueError when "torch" is asked
    for a model whose transform cannot run on tensors."""
    if decode == "pil":
        return "pil"
    if encoder.tensor_geometry is None:
        if decode == "torch":
            raise ValueError(
                f"image_decode 'torch': the transform of model {encoder.model_id!r} has steps that take only PIL "
                "images (tensor decoding needs resize, centre crop and normalise); use 'pil' or 'auto'"
            )
        return "pil"
    if decode == "auto" and encoder.device.type != "cuda":
        return "pil"
    return "torch" if tensor_decoder_works(str(encoder.device)) else "pil"


def embed_images(
    encoder: Encoder,
    items: Iterable[tuple[Any, bytes | None]],
    batch_size: int,
    decode_threads: int = 4,
    prefetch: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
    decode: ImageDecode = "pil",
) -> Iterator[EmbeddedBatch]:
    """Embed ``(id, image bytes)`` pairs in batches of ``batch_size``; undecodable bytes become rejects.

    Batches are prepared ``prefetch`` ahead of the model. With ``decode`` "pil", Pillow decodes and the model's
    transform runs on ``decode_threads`` CPU threads. With "torch", those threads only read headers: JPEGs are
    decoded as one batch on the model's device and resized there, and whatever that decoder refuses (other
    formats, CMYK, broken files) takes the Pillow way, which also gives the reject reasons.
    """
    import torch

    way = image_decoder(encoder, decode)
    geometry = encoder.tensor_geometry

    with ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="realsyn-decode") as decoders:

        def one(data: bytes | None) -> Any:
            try:
                return encoder.preprocess(data, max_pixels, draft)
            except Rejected as r:
                return r

        def routed(data: bytes | None) -> Any:
            try:
                return route_jpeg(data, max_pixels)
            except Rejected as r:
                return r

        def assemble(chunk: list[tuple[Any, Any]], results: list[Any], channels_first: bool) -> _Prepared:
            ok = [(key, t) for (key, _), t in zip(chunk, results, strict=True) if not isinstance(t, Rejected)]
            bad = [(key, t) for (key, _), t in zip(chunk, results, strict=True) if isinstance(t, Rejected)]
            inputs = torch.stack([t for _, t in ok]) if ok else None
            if inputs is not None and channels_first:
                inputs = inputs.permute(0, 2, 3, 1)  # the (N, H, W, C) uint8 layout Encoder._normalize takes
            return _Prepared(
                [k for k, _ in ok], inputs, [k for k, _ in bad], [r.reason for _, r in bad], [r.detail for _, r in bad]
            )

        def prepare(chunk: list[tuple[Any, Any]]) -> _Prepared:
            return assemble(chunk, list(decoders.map(one, [data for _, data in chunk])), channels_first=False)

        def prepare_on_device(chunk: list[tuple[Any, Any]]) -> _Prepared:
            assert geometry is not None
            datas = [data for _, data in chunk]
            results: list[Any] = list(decoders.map(routed, datas))  # Jpeg, None (Pillow's) or Rejected
            jpeg_at = [i for i, r in enumerate(results) if isinstance(r, Jpeg)]
            decoded = decode_jpegs([results[i] for i in jpeg_at], encoder.device)
            for i in jpeg_at:
                results[i] = None  # Pillow's turn, unless the tensor decoder took it (below)
            done = [(i, pixels) for i, pixels in zip(jpeg_at, decoded, strict=True) if pixels is not None]
            if done:
                for (i, _), pixels in zip(done, geometry([pixels for _, pixels in done]), strict=True):
                    results[i] = pixels
            pil_at = [i for i, r in enumerate(results) if r is None]
            for i, r in zip(pil_at, decoders.map(one, [datas[i] for i in pil_at]), strict=True):
                results[i] = r if isinstance(r, Rejected) else r.to(encoder.device).permute(2, 0, 1)
            return assemble(chunk, results, channels_first=True)

        yield from _pipelined(
            _chunks(items, batch_size),
            prepare_on_device if way == "torch" else prepare,
            encoder.encode_images,
            prefetch,
            encoder.device.type == "cuda",
        )


def embed_texts(
    encoder: Encoder,
    items: Iterable[tuple[Any, str | None]],
    batch_size: int,
    prefetch: int = 2,
) -> Iterator[EmbeddedBatch]:
    """Embed ``(id, text)`` pairs in batches; the tokenizer truncates to the model's context length.

    Null or blank texts become rejects.
    """

    def prepare(chunk: list[tuple[Any, Any]]) -> _Prepared:
        ok = [(key, text) for key, text in chunk if isinstance(text, str) and text.strip()]
        bad = [key for key, text in chunk if not (isinstance(text, str) and text.strip())]
        inputs = encoder.tokenize([t for _, t in ok]) if ok else None
        return _Prepared([k for k, _ in ok], inputs, bad, [REASON_EMPTY_TEXT] * len(bad), [""] * len(bad))

    yield from _pipelined(
        _chunks(items, batch_size), prepare, encoder.encode_texts, prefetch, encoder.device.type == "cuda"
    )
