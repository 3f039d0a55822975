"""The captioner on the tiny random BLIP of the registry, on CPU, through the real code path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.photos import encode, photo
from udfs import captioner as cap
from udfs.decode import REASON_EMPTY_IMAGE, REASON_NOT_AN_IMAGE, decode_image
from udfs.models import get_spec, load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "conf" / "models.yaml"
PHOTOS = ["astronaut", "coffee", "chelsea", "china", "rocket"]


@pytest.fixture(scope="module")
def tiny() -> cap.Captioner:
    """The tiny random captioner, loaded once for the module."""
    return cap.load_captioner(get_spec(load_registry(REGISTRY), "tiny-random-captioner", kind="captioner"), "cpu")


def bare_captions(model: cap.Captioner, images: list[bytes], max_new_tokens: int) -> list[str]:
    """One image at a time, straight through transformers: the answer a batch must reproduce."""
    out = []
    for data in images:
        pixels = model.processor(images=[decode_image(data)], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            ids = model.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(model.tokenizer.decode(ids[0], skip_special_tokens=True).strip())
    return out


def test_batched_captions_equal_one_by_one_and_bad_bytes_are_rejected(tiny: cap.Captioner) -> None:
    images = [encode(photo(name), "JPEG") for name in PHOTOS]
    expected = bare_captions(tiny, images, 12)
    items = [(f"i{k}", data) for k, data in enumerate(images)] + [("bad", b"not an image"), ("empty", b"")]
    batches = list(cap.caption_images(tiny, items, batch_size=3, max_new_tokens=12))
    assert [len(b.ids) + len(b.rejected_ids) for b in batches] == [3, 3, 1]
    got = {k: c for b in batches for k, c in zip(b.ids, b.captions, strict=True)}
    assert got == {f"i{k}": c for k, c in enumerate(expected) if c}
    reasons = {k: r for b in batches for k, r in zip(b.rejected_ids, b.reasons, strict=True)}
    assert reasons["bad"] == REASON_NOT_AN_IMAGE
    assert reasons["empty"] == REASON_EMPTY_IMAGE
    assert all(len(c) <= 12 for c in got.values())  # one character per token, at most max_new_tokens


def test_empty_caption_is_rejected(tiny: cap.Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    eos = tiny.tokenizer.eos_token_id

    def only_specials(pixel_values: torch.Tensor, **_: object) -> torch.Tensor:
        return torch.tensor([[tiny.tokenizer.bos_token_id, eos]] * int(pixel_values.shape[0]))

    monkeypatch.setattr(tiny.model, "generate", only_specials)
    [batch] = cap.caption_images(tiny, [("a", encode(photo("coffee")))], batch_size=4, max_new_tokens=5)
    assert batch.ids == []
    assert batch.reasons == [cap.REASON_EMPTY_CAPTION]


def test_out_of_memory_halves_the_caption_batch(tiny: cap.Captioner, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [(f"i{k}", encode(photo(name))) for k, name in enumerate(PHOTOS)]
    expected = [c for b in cap.caption_images(tiny, images, 5, 8) for c in b.captions]
    real = tiny.model.generate
    sizes: list[int] = []

    def limited(pixel_values: torch.Tensor, **kw: object) -> torch.Tensor:
        sizes.append(int(pixel_values.shape[0]))
        if pixel_values.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(pixel_values=pixel_values, **kw)

    monkeypatch.setattr(tiny.model, "generate", limited)
    got = [c for b in cap.caption_images(tiny, images, 5, 8) for c in b.captions]
    assert sizes == [5, 2, 2, 1]
    assert tiny.max_batch == 2
    assert got == expected
