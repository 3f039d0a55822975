"""CLIP embedding UDF functions on tiny random-weight models (their vectors are meaningless as embeddings)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.photos import encode, photo
from udfs import clip, decode, models

REPO = Path(__file__).resolve().parents[2]
REGISTRY = REPO / "conf" / "models.yaml"


@pytest.fixture(scope="module")
def tiny() -> clip.ModelSpec:
    """The tiny random open_clip model of the registry."""
    return models.get_spec(models.load_registry(REGISTRY), "tiny-random")


@pytest.fixture(scope="module")
def encoder(tiny: clip.ModelSpec) -> clip.Encoder:
    """The tiny model loaded on the CPU (cached per process, like in a Spark worker)."""
    return clip.get_encoder(tiny, "cpu")


@pytest.fixture(scope="module")
def direct(tiny: clip.ModelSpec, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Any]:
    """The same tiny model built straight with open_clip: (model, preprocess, tokenizer)."""
    import open_clip

    name = "direct-tiny-test"
    path = tmp_path_factory.mktemp("open_clip") / f"{name}.json"
    path.write_text(json.dumps(tiny.config), encoding="utf-8")
    open_clip.add_model_config(path)
    torch.manual_seed(tiny.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def image_bytes(seed: int, size: tuple[int, int] = (48, 40), fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """A random image of ``size`` (width, height) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def direct_image_vectors(direct: tuple[Any, Any, Any], blobs: list[bytes]) -> np.ndarray:
    """open_clip's documented recipe: open, preprocess, encode_image, L2-normalise."""
    model, preprocess, _ = direct
    pixels = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in blobs])
    with torch.no_grad():
        out = model.encode_image(pixels)
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def direct_text_vectors(direct: tuple[Any, Any, Any], texts: list[str]) -> np.ndarray:
    """open_clip's documented recipe: tokenize, encode_text, L2-normalise."""
    model, _, tokenizer = direct
    with torch.no_grad():
        out = model.encode_text(tokenizer(texts))
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def collect(batches: Any) -> tuple[dict[Any, np.ndarray], dict[Any, str]]:
    """Vectors by id and reasons by id from a stream of EmbeddedBatch."""
    vectors: dict[Any, np.ndarray] = {}
    reasons: dict[Any, str] = {}
    for b in batches:
        vectors.update(zip(b.ids, b.vectors, strict=True))
        reasons.update(zip(b.rejected_ids, b.reasons, strict=True))
    return vectors, reasons


# ------------------------------------------------------------------------------------------------ registry


def test_registry_has_every_kind_of_entry() -> None:
    reg = models.load_registry(REGISTRY)
    assert reg["eva02-l-14"].architecture == "EVA02-L-14"
    assert reg["eva02-l-14"].pretrained == "merged2b_s4b_b131k"
    assert reg["hf-siglip-base"].family == "hf"
    assert reg["hf-clip-vit-b-32"].source == "openai/clip-vit-base-patch32"
    assert reg["tiny-random"].random_init is True
    assert all(name == spec.name for name, spec in reg.items())


def test_registry_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  broken:\n    family: open_clip\n    architecture: ViT-B-32\n", encoding="utf-8")
    with pytest.raises(models.RegistryError, match=r"models\.broken: .*pretrained"):
        models.load_registry(bad)
    with pytest.raises(models.RegistryError, match=r"known models: .*tiny-random"):
        models.get_spec(models.load_registry(REGISTRY), "no-such-model")


def test_missing_weights_name_what_was_looked_for(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "vit.pt"
    spec = clip.ModelSpec(name="m", family="open_clip", architecture="ViT-B-32", pretrained=str(missing))
    with pytest.raises(clip.ModelNotAvailable, match=f"checkpoint file not found: {missing}"):
        clip.load_encoder(spec, "cpu")
    spec = clip.ModelSpec(name="m", family="open_clip", architecture="ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(clip.ModelNotAvailable, match="no pretrained tag 'no-such-tag' for 'ViT-B-32'"):
        clip.load_encoder(spec, "cpu")
    spec = clip.ModelSpec(name="m", family="hf", source=str(tmp_path / "no-dir"))
    with pytest.raises(clip.ModelNotAvailable, match=f"directory not found: {tmp_path / 'no-dir'}"):
        clip.load_encoder(spec, "cpu")


@pytest.mark.parametrize(
    ("policy", "addresses", "cuda", "visible", "expected"),
    [
        ("auto", ["3"], True, None, "cuda:3"),
        ("auto", ["3"], True, "2,3", "cuda:1"),
        ("auto", ["5"], True, "7", "cuda:0"),
        ("auto", [], True, None, "cuda"),
        ("auto", [], False, None, "cpu"),
        ("auto", ["1"], False, None, "cpu"),
        ("cpu", ["1"], True, None, "cpu"),
        ("cuda", ["2"], True, None, "cuda:2"),
    ],
)
def test_device_follows_the_gpu_spark_assigned(
    policy: models.DevicePolicy, addresses: list[str], cuda: bool, visible: str | None, expected: str
) -> None:
    assert models.pick_device(policy, addresses, cuda, visible) == expected


def test_cuda_policy_without_a_gpu_fails() -> None:
    with pytest.raises(RuntimeError, match="no CUDA device"):
        models.pick_device("cuda", [], False, None)


# ------------------------------------------------------------------------------------------------ decoding


def test_alpha_and_palette_transparency_become_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (10, 200, 30, 0))
    rgba.putpixel((0, 0), (10, 200, 30, 255))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    img = decode.decode_image(buf.getvalue())
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (10, 200, 30)
    assert img.getpixel((1, 1)) == (255, 255, 255)

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 0, 0])
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    img = decode.decode_image(buf.getvalue())
    assert [img.getpixel((0, 0)), img.getpixel((1, 0))] == [(255, 255, 255), (200, 0, 0)]


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    img = decode.decode_image(buf.getvalue())
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    img = decode.decode_image(image_bytes(1, (16, 8), "JPEG", mode="CMYK"))
    assert (img.mode, img.size) == ("RGB", (16, 8))


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    buf = io.BytesIO()
    img.save(buf, "PNG", exif=exif)
    out = decode.decode_image(buf.getvalue())
    assert out.size == (10, 20)
    assert out.getpixel((5, 2)) == (255, 0, 0)  # the red half is now on top
    assert out.getpixel((5, 17)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, decode.REASON_EMPTY_IMAGE),
        (b"", decode.REASON_EMPTY_IMAGE),
        (b"<html>not an image</html>", decode.REASON_NOT_AN_IMAGE),
        (image_bytes(2, (40, 40))[:200], decode.REASON_UNDECODABLE),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, decode.REASON_NOT_AN_IMAGE),
    ],
)
def test_bad_bytes_are_rejected(data: bytes | None, reason: str) -> None:
    with pytest.raises(decode.Rejected) as info:
        decode.decode_image(data)
    assert info.value.reason == reason


def test_too_many_pixels_is_rejected_before_decoding() -> None:
    with pytest.raises(decode.Rejected) as info:
        decode.decode_image(image_bytes(3, (40, 30)), max_pixels=1000)
    assert (info.value.reason, info.value.detail) == (decode.REASON_TOO_MANY_PIXELS, "40x30 pixels > 1000")


# ------------------------------------------------------------------------------------- decoding on the device


def _oriented_jpeg(orientation: int) -> bytes:
    img = Image.fromarray(np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)  # type: ignore[arg-type]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tensor_decoding_turns_every_exif_orientation_as_pillow_does(orientation: int) -> None:
    data = _oriented_jpeg(orientation)
    jpeg = decode.route_jpeg(data)
    assert jpeg is not None and jpeg.orientation == orientation
    (got,) = decode.decode_jpegs([jpeg], torch.device("cpu"))
    expected = torch.from_numpy(np.array(decode.decode_image(data))).permute(2, 0, 1)
    assert got is not None and torch.equal(got, expected)  # the same libjpeg-turbo decode, the same turn


@pytest.mark.parametrize(
    ("resize", "crop"),
    [
        ({"size": 32, "interpolation": "bicubic"}, 32),
        ({"size": [40], "interpolation": "bilinear", "max_size": 50}, (30, 36)),
        ({"size": (24, 40), "interpolation": "bicubic"}, 24),
        ({"size": 16, "interpolation": "nearest"}, 20),  # smaller than the crop: zero padding
    ],
)
def test_batched_resize_crop_equals_torchvisions_modules(resize: dict[str, Any], crop: Any) -> None:
    from torchvision import transforms as T

    mode = T.InterpolationMode(resize.pop("interpolation"))
    mean, std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    head = [T.Resize(interpolation=mode, **resize), T.CenterCrop(crop)]
    geometry = clip.ResizeCrop.of(T.Compose([*head, T.ToTensor(), T.Normalize(mean, std)]))
    assert geometry is not None
    rng = np.random.default_rng(0)
    shapes = [(3, 61, 90), (3, 80, 37), (3, 33, 33), (3, 7, 300)]
    images = [torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in shapes]
    batch = geometry(images)
    assert batch.dtype == torch.uint8
    for got, image in zip(batch, images, strict=True):
        expected = image
        for step in head:
            expected = step(expected)
        assert torch.equal(got, expected)


def test_other_transform_shapes_have_no_tensor_geometry() -> None:
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize((0.5,) * 3, (0.2,) * 3)]
    assert clip.ResizeCrop.of(T.Compose([T.CenterCrop(8), T.Resize(8), *tail])) is None
    assert clip.ResizeCrop.of(T.Compose([T.Resize(8), T.CenterCrop(8), T.Grayscale(3), *tail])) is None
    assert clip.ResizeCrop.of(T.Compose([T.Resize(8), T.CenterCrop(8), T.ToTensor()])) is None


def test_tensor_resize_is_within_a_few_levels_of_pillow(encoder: clip.Encoder) -> None:
    assert encoder.tensor_geometry is not None
    sources = [photo("astronaut"), photo("coffee"), photo("china"), photo("camera")]
    sizes = [(90, 61), (37, 80), (400, 300), (33, 32)]
    blobs = [encode(im.resize(size), "JPEG", quality=90) for im, size in zip(sources, sizes, strict=True)]
    for data in blobs:
        pillow = encoder.preprocess(data).permute(2, 0, 1).int()
        jpeg = decode.route_jpeg(data)
        assert jpeg is not None
        (pixels,) = decode.decode_jpegs([jpeg], torch.device("cpu"))
        assert pixels is not None
        tensor = encoder.tensor_geometry([pixels])[0].int()
        assert tensor.shape == pillow.shape == (3, encoder.image_size, encoder.image_size)
        diff = (tensor - pillow).abs().float()
        assert diff.mean() < 0.5 and diff.max() <= 8, (diff.mean(), diff.max())


def test_tensor_decoding_keeps_every_reject_reason_and_other_format(tiny: clip.ModelSpec) -> None:
    enc = clip.load_encoder(tiny, "cpu")
    jpeg = image_bytes(1, (64, 48))
    items = [
        ("rgb", jpeg),
        ("grey", image_bytes(2, (50, 70), mode="L")),
        ("png", image_bytes(3, fmt="PNG", mode="RGBA")),
        ("webp", image_bytes(5, fmt="WEBP")),
        ("cmyk", image_bytes(4, mode="CMYK")),
        ("truncated", jpeg[: len(jpeg) // 2]),
        ("empty", b""),
        ("none", None),
        ("junk", b"<html>not an image</html>"),
        ("huge", image_bytes(6, (300, 300))),
    ]
    kwargs: dict[str, Any] = {"batch_size": 4, "max_pixels": 60_000}
    pillow, pillow_rejects = collect(clip.embed_images(enc, items, decode="pil", **kwargs))
    tensor, tensor_rejects = collect(clip.embed_images(enc, items, decode="torch", **kwargs))
    assert tensor_rejects == pillow_rejects
    assert pillow_rejects == {
        "truncated": decode.REASON_UNDECODABLE,
        "empty": decode.REASON_EMPTY_IMAGE,
        "none": decode.REASON_EMPTY_IMAGE,
        "junk": decode.REASON_NOT_AN_IMAGE,
        "huge": decode.REASON_TOO_MANY_PIXELS,
    }
    assert sorted(tensor) == sorted(pillow) == ["cmyk", "grey", "png", "rgb", "webp"]
    for key in ("png", "webp", "cmyk"):  # not decoded as tensors: the Pillow way, the same vectors
        np.testing.assert_allclose(tensor[key], pillow[key], atol=1e-5)
    for key in ("rgb", "grey"):
        assert float(tensor[key] @ pillow[key]) > 0.999


def test_image_decoder_choice(encoder: clip.Encoder) -> None:
    import dataclasses

    assert clip.image_decoder(encoder, "pil") == "pil"
    assert clip.image_decoder(encoder, "auto") == "pil"  # on a CPU, Pillow's threads
    assert clip.image_decoder(encoder, "torch") == "torch"
    pil_only = dataclasses.replace(encoder, tensor_geometry=None)
    assert clip.image_decoder(pil_only, "auto") == "pil"
    with pytest.raises(ValueError, match=r"image_decode 'torch'.*tiny-random"):
        clip.image_decoder(pil_only, "torch")


# ------------------------------------------------------------------------------------------ the open_clip model


def test_image_vectors_equal_the_model_called_directly(encoder: clip.Encoder, direct: Any) -> None:
    blobs = [image_bytes(i, (30 + 7 * i, 60 - 5 * i)) for i in range(5)] + [image_bytes(9, (33, 33), "PNG")]
    vectors, reasons = collect(clip.embed_images(encoder, list(enumerate(blobs)), batch_size=4))
    assert reasons == {}
    got = np.stack([vectors[i] for i in range(len(blobs))])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, direct_image_vectors(direct, blobs), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_device_side_normalisation_equals_the_models_own_transform(encoder: clip.Encoder) -> None:
    img = decode.decode_image(image_bytes(4, (50, 37)))
    assert encoder.model_transform is not None and encoder.pixel_mean is not None
    cpu_part = encoder.image_transform(img)
    assert (cpu_part.dtype, tuple(cpu_part.shape)) == (torch.uint8, (32, 32, 3))
    images = [img, decode.decode_image(image_bytes(5, (64, 30)))]
    batch = encoder._normalize(torch.stack([encoder.image_transform(i) for i in images]))
    assert batch.is_contiguous()
    # The same float32 operations as torchvision's ToTensor + Normalize: bit-identical, not merely close.
    for got, image in zip(batch, images, strict=True):
        assert torch.equal(got, encoder.model_transform(image))


def test_text_vectors_equal_the_model_called_directly_and_are_truncated(encoder: clip.Encoder, direct: Any) -> None:
    words = [
        "a",
        "dog",
        "runs",
        "along",
        "the",
        "beach",
        "while",
        "two",
        "children",
        "build",
        "a",
        "castle",
        "of",
        "sand",
        "near",
        "the",
        "water",
    ]
    texts = ["a photo of a cat", " ".join(words), " ".join([*words, "at", "sunset", "in", "june"])]
    vectors, reasons = collect(clip.embed_texts(encoder, [("a", texts[0]), ("b", texts[1]), ("c", texts[2])], 2))
    assert reasons == {}
    got = np.stack([vectors[k] for k in "abc"])
    np.testing.assert_allclose(got, direct_text_vectors(direct, texts), atol=1e-5)
    assert encoder.context_length == 16
    # Both long texts share their first 14 tokens: after truncation to 16 (with start and end) they are equal.
    np.testing.assert_allclose(got[1], got[2], atol=1e-6)
    assert not np.allclose(got[0], got[1], atol=1e-3)


def test_empty_texts_are_rejected(encoder: clip.Encoder) -> None:
    vectors, reasons = collect(clip.embed_texts(encoder, [("a", "cat"), ("b", "  "), ("c", None)], 8))
    assert list(vectors) == ["a"]
    assert reasons == {"b": clip.REASON_EMPTY_TEXT, "c": clip.REASON_EMPTY_TEXT}


def test_a_vector_that_is_not_finite_becomes_a_reject(encoder: clip.Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    # What an fp16 overflow looks like after normalisation: a row of NaN. Poison the second row of each batch.
    real = encoder.encode_texts

    def overflowing(inputs: Any) -> np.ndarray:
        out = real(inputs).copy()
        out[1] = np.nan
        return out

    monkeypatch.setattr(encoder, "encode_texts", overflowing)
    items = [("a", "cat"), ("b", "dog"), ("c", "  "), ("d", "bird"), ("e", "fish")]
    vectors, reasons = collect(clip.embed_texts(encoder, items, 3))
    # batches (a, b, c) and (d, e): c is blank, so the model sees (a, b) and (d, e); b and e overflow
    assert sorted(vectors) == ["a", "d"]
    assert reasons == {"b": clip.REASON_NON_FINITE, "c": clip.REASON_EMPTY_TEXT, "e": clip.REASON_NON_FINITE}
    assert all(np.isfinite(v).all() for v in vectors.values())


def test_batch_size_threads_and_prefetch_do_not_change_results(encoder: clip.Encoder) -> None:
    items = [(i, image_bytes(i, (20 + i, 25))) for i in range(9)] + [(99, b"junk")]
    base, base_rejects = collect(clip.embed_images(encoder, items, batch_size=16, decode_threads=1, prefetch=1))
    other, other_rejects = collect(clip.embed_images(encoder, items, batch_size=2, decode_threads=3, prefetch=3))
    assert base_rejects == other_rejects == {99: decode.REASON_NOT_AN_IMAGE}
    assert sorted(base) == sorted(other) == list(range(9))
    for key in base:
        np.testing.assert_allclose(base[key], other[key], atol=1e-5)


def test_out_of_memory_halves_the_batch_and_continues(tiny: clip.ModelSpec) -> None:
    enc = clip.load_encoder(tiny, "cpu")
    real = enc.encode_image_fn
    sizes: list[int] = []

    def limited(pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(int(pixels.shape[0]))
        if pixels.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(pixels)

    items = [(i, image_bytes(i)) for i in range(10)]
    expected, _ = collect(clip.embed_images(enc, items, batch_size=10))
    enc.encode_image_fn = limited
    got, _ = collect(clip.embed_images(enc, items, batch_size=10))
    assert sizes == [10, 5, 2, 2, 2, 2, 2]
    assert enc.max_batch == 2
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)


def test_other_errors_are_not_retried(tiny: clip.ModelSpec) -> None:
    enc = clip.load_encoder(tiny, "cpu")

    def broken(pixels: torch.Tensor) -> torch.Tensor:
        raise ValueError("shape mismatch")

    enc.encode_image_fn = broken
    with pytest.raises(ValueError, match="shape mismatch"):
        collect(clip.embed_images(enc, [(0, image_bytes(0))], batch_size=4))


def test_model_is_loaded_once_per_process(tiny: clip.ModelSpec, encoder: clip.Encoder) -> None:
    assert clip.get_encoder(tiny, "cpu") is encoder


# -------------------------------------------------------------------------------------- Hugging Face models


def _tiny_bpe_tokenizer(folder: Path) -> Any:
    """A CLIP BPE tokenizer over single bytes plus a few merges, built locally (no download)."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "c a", "ca t</w>"]
    vocab_list = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random CLIP and SigLIP models saved as local Hugging Face directories."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    root = tmp_path_factory.mktemp("hf")
    tokenizer = _tiny_bpe_tokenizer(root)
    vocab = len(tokenizer)
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision = {**text, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    out = {}
    clip_dir = root / "clip"
    CLIPModel(
        CLIPConfig(
            text_config={
                **text,
                "vocab_size": vocab,
                "max_position_embeddings": 12,
                "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id,
            },
            vision_config=vision,
            projection_dim=16,
        )
    ).save_pretrained(clip_dir)
    tokenizer.save_pretrained(clip_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip_dir)
    out["clip"] = clip_dir
    siglip_dir = root / "siglip"
    SiglipModel(
        SiglipConfig(text_config={**text, "vocab_size": vocab, "max_position_embeddings": 12}, vision_config=vision)
    ).save_pretrained(siglip_dir)
    tokenizer.save_pretrained(siglip_dir)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(siglip_dir)
    out["siglip"] = siglip_dir
    return out


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_models_equal_the_model_called_directly(kind: str, hf_dirs: dict[str, Path]) -> None:
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    folder = hf_dirs[kind]
    enc = clip.load_encoder(clip.ModelSpec(name=f"hf-{kind}", family="hf", source=str(folder)), "cpu")
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)

    blobs = [image_bytes(i, (40, 30 + i)) for i in range(3)]
    vectors, _ = collect(clip.embed_images(enc, list(enumerate(blobs)), batch_size=2))
    pixels = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in blobs], return_tensors="pt")
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pixels["pixel_values"])
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
    expected = torch.nn.functional.normalize(feats, dim=-1).numpy()
    np.testing.assert_allclose(np.stack([vectors[i] for i in range(3)]), expected, atol=1e-5)

    texts = ["the cat", "the cat sat on the mat " * 5]
    vectors, _ = collect(clip.embed_texts(enc, list(enumerate(texts)), batch_size=8))
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=12, return_tensors="pt")
    inputs = {"input_ids": tokens["input_ids"]}
    if kind == "clip":
        inputs["attention_mask"] = tokens["attention_mask"]
    with torch.no_grad():
        feats = model.get_text_features(**inputs)
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
    expected = torch.nn.functional.normalize(feats, dim=-1).numpy()
    np.testing.assert_allclose(np.stack([vectors[i] for i in range(2)]), expected, atol=1e-5)
    assert enc.context_length == 12


# ------------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_on_gpu_is_close_to_float32(tiny: clip.ModelSpec) -> None:
    cpu = clip.load_encoder(tiny, "cpu")
    gpu = clip.load_encoder(tiny, "cuda", precision="fp16")
    assert gpu.dtype == torch.float16
    items = [(i, image_bytes(i)) for i in range(8)]
    a, _ = collect(clip.embed_images(cpu, items, batch_size=4))
    b, _ = collect(clip.embed_images(gpu, items, batch_size=4))
    for key in a:
        assert b[key].dtype == np.float32
        np.testing.assert_allclose(a[key], b[key], atol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_decoding_on_gpu_is_close_to_pillow(tiny: clip.ModelSpec) -> None:
    assert decode.tensor_decoder_works("cuda")
    gpu = clip.load_encoder(tiny, "cuda", precision="fp32")
    assert clip.image_decoder(gpu, "auto") == "torch"
    blobs = [encode(photo(name).resize((97, 64)), "JPEG", quality=90) for name in ("astronaut", "coffee", "chelsea")]
    blobs += [_oriented_jpeg(6), image_bytes(3, fmt="PNG"), b"junk"]
    items = list(enumerate(blobs))
    nvjpeg, nv_rejects = collect(clip.embed_images(gpu, items, batch_size=8, decode="auto"))
    pillow, pil_rejects = collect(clip.embed_images(gpu, items, batch_size=8, decode="pil"))
    assert nv_rejects == pil_rejects == {5: decode.REASON_NOT_AN_IMAGE}
    for key in pillow:
        assert float(nvjpeg[key] @ pillow[key]) > 0.99
    jpegs = [decode.route_jpeg(blobs[0]), decode.route_jpeg(blobs[3])]
    assert all(j is not None for j in jpegs)
    on_gpu = decode.decode_jpegs(jpegs, torch.device("cuda"))  # type: ignore[arg-type]
    on_cpu = decode.decode_jpegs(jpegs, torch.device("cpu"))  # type: ignore[arg-type]
    assert [tuple(t.shape) for t in on_gpu] == [tuple(t.shape) for t in on_cpu] == [(3, 64, 97), (3, 50, 30)]
    # nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: close on a photograph
    assert (on_gpu[0].cpu().int() - on_cpu[0].int()).abs().float().mean() < 5


def test_huge_images_decode_within_the_memory_bound() -> None:
    big = Image.new("RGB", (9000, 9000), (200, 30, 30))
    # A JPEG over the bound is decoded at a reduced DCT scale (1/2 here: 4500 x 4500, ~81 MB).
    assert decode.decode_image(encode(big, "JPEG")).size == (4500, 4500)
    with pytest.raises(decode.Rejected, match=r"too_many_pixels.*324 MB"):
        decode.decode_image(encode(big, "PNG"))
