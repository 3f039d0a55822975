"""vlm mode's writer: prompt and chat, batched generation on the tiny random Qwen2-VL, the batch function's decode
rejects and checks, and vLLM's request building (vLLM itself runs only in the GPU test)."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from realsyn.config import load_config
from tests.support.photos import encode, photo
from udfs import llm, vlm
from udfs.decode import REASON_EMPTY_IMAGE, REASON_NOT_AN_IMAGE, REASON_TOO_MANY_PIXELS
from udfs.models import get_spec, load_registry

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "conf" / "models.yaml"
PHOTOS = ["astronaut", "coffee", "chelsea", "china", "rocket"]


@pytest.fixture(scope="module")
def tiny() -> vlm.TransformersVLM:
    """The tiny random VLM of the registry on CPU, batches of 3."""
    spec = get_spec(load_registry(REGISTRY), "tiny-random-vlm", kind="vlm")
    return vlm.load_transformers_vlm(spec, "cpu", "auto", batch_size=3)


def prompt() -> vlm.VlmPrompt:
    g = load_config(ROOT / "conf" / "local.yaml").generate
    return vlm.VlmPrompt(g.vlm_prompt_version, g.vlm_system_prompt, g.vlm_user_prompt)


def test_prompt_renders_the_image_before_the_text_under_the_chat_template(tiny: vlm.TransformersVLM) -> None:
    p = vlm.VlmPrompt("x", "Be brief.", "Text: {retrieved_text}\nTags: {tags}")
    chat = p.messages("  A red bridge in fog.  ", ["bridge", "fog"])
    assert chat == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Text: A red bridge in fog.\nTags: bridge, fog"},
    ]
    assert p.messages("t", [])[-1]["content"].endswith("Tags: none")
    assert p.uses_tags and not prompt().uses_tags
    assert vlm.render(tiny.processor, chat) == (
        "<|start|>system\nBe brief.<|end|>\n<|start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "Text: A red bridge in fog.\nTags: bridge, fog<|end|>\n<|start|>assistant\n"
    )


def test_prompt_problems_name_missing_and_unfilled_placeholders() -> None:
    assert vlm.prompt_problems("Text: {retrieved_text} {tags}") == []
    assert vlm.prompt_problems("Describe it.") == ["must hold {retrieved_text}"]
    [problem] = vlm.prompt_problems("{retrieved_text} {caption}")
    assert problem.startswith("holds {caption}, which vlm mode does not fill in")


def test_fit_pixels_scales_down_keeping_the_aspect_only() -> None:
    big = Image.new("RGB", (400, 100))
    small = vlm.fit_pixels(big, 1024)
    assert small.size == (64, 16)
    assert vlm.fit_pixels(small, 1024) is small


def requests(n: int) -> list[vlm.VlmRequest]:
    """Photos of different shapes (so different numbers of image tokens) with prompts of different lengths."""
    out = []
    for i in range(n):
        im = photo(PHOTOS[i % len(PHOTOS)])
        im = vlm.fit_pixels(im.crop((0, 0, im.size[0] // (1 + i % 3), im.size[1])), 1024)
        out.append(vlm.VlmRequest(im, prompt().messages(f"retrieved text number {i}" + " more" * i)))
    return out


def test_batched_generation_equals_one_request_at_a_time(tiny: vlm.TransformersVLM) -> None:
    reqs = requests(5)
    assert len({r.image.size for r in reqs}) > 1
    got = tiny.generate(reqs, max_new_tokens=12)
    eos = llm.eos_ids(tiny.model, tiny.processor.tokenizer)
    for req, gen in zip(reqs, got, strict=True):
        one = tiny.processor(text=[vlm.render(tiny.processor, req.chat)], images=[req.image], return_tensors="pt")
        with torch.inference_mode():
            out = tiny.model.generate(**one, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
        new = out[0, one["input_ids"].shape[1] :].tolist()
        assert gen == llm.decode_generation(tiny.processor.tokenizer, new, eos)
    fixed = tiny.generate(reqs[:2], max_new_tokens=10, min_new_tokens=10)
    assert [g.n_tokens for g in fixed] == [10, 10]


def test_out_of_memory_halves_the_generation_batch(tiny: vlm.TransformersVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    reqs = requests(3)
    expected = tiny.generate(reqs, max_new_tokens=8)
    real = tiny.model.generate
    sizes: list[int] = []

    def limited(input_ids: torch.Tensor, **kw: object) -> torch.Tensor:
        sizes.append(int(input_ids.shape[0]))
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(tiny.model, "generate", limited)
    assert tiny.generate(reqs, max_new_tokens=8) == expected
    assert sizes == [3, 1, 1, 1]


@dataclass
class Scripted:
    """A backend that answers with given generations and keeps what it was asked."""

    answers: list[llm.Generation]
    model_id: str = "scripted"
    asked: list[vlm.VlmRequest] = field(default_factory=list)

    def generate(
        self, requests: Sequence[vlm.VlmRequest], max_new_tokens: int, min_new_tokens: int = 0
    ) -> list[llm.Generation]:
        self.asked += requests
        return self.answers[: len(requests)]


def test_write_texts_rejects_bad_bytes_with_the_decoders_reason_and_checks_every_output() -> None:
    huge = encode(Image.new("RGB", (200, 100)))
    rows = [
        ("ok", encode(photo("coffee")), "a cup of coffee", []),
        ("empty", b"", "t", []),
        ("html", b"<html></html>", "t", []),
        ("echo", huge, "a cup", ["cup"]),
        ("long", huge, "t", []),
        ("cut", huge, "t", []),
        ("bomb", huge, "t", []),
    ]
    p = vlm.VlmPrompt("v", "", "Text: {retrieved_text}")
    answers = [
        llm.Generation("  A cup\n of coffee. ", 5, True),
        llm.Generation("Text: a cup", 4, True),
        llm.Generation("w " * 5, 5, True),
        llm.Generation("A cup of", 8, False),
    ]
    backend = Scripted(answers)
    limits = vlm.VlmLimits(max_new_tokens=8, max_words=4, reject_truncated=True, image_pixels=1024)
    got = vlm.write_texts(backend, rows[:6], p, limits)
    assert [(w.key, w.text, w.reason, w.n_tokens) for w in got] == [
        ("ok", "A cup of coffee.", None, 5),
        ("empty", None, REASON_EMPTY_IMAGE, 0),
        ("html", None, REASON_NOT_AN_IMAGE, 0),
        ("echo", None, llm.REASON_PROMPT_ECHO, 4),
        ("long", None, llm.REASON_OVER_LONG, 5),
        ("cut", None, llm.REASON_TRUNCATED, 8),
    ]
    assert [r.chat[-1]["content"] for r in backend.asked] == [
        "Text: a cup of coffee",
        "Text: a cup",
        "Text: t",
        "Text: t",
    ]
    assert all(r.image.size[0] * r.image.size[1] <= 1024 for r in backend.asked)
    assert backend.asked[1].image.size == (45, 22)  # 200 x 100 scaled to <= 1024 pixels, aspect kept
    [bomb] = vlm.write_texts(Scripted([]), rows[6:], p, vlm.VlmLimits(8, max_pixels=10_000))
    assert (bomb.reason, bomb.text) == (REASON_TOO_MANY_PIXELS, None)


def test_the_tiny_model_writes_through_the_batch_function(tiny: vlm.TransformersVLM) -> None:
    rows: list[tuple[int, bytes, str, list[str]]] = [
        (i, encode(photo(name)), f"a text about {name}", []) for i, name in enumerate(PHOTOS[:3])
    ]
    limits = vlm.VlmLimits(max_new_tokens=10, reject_truncated=False, image_pixels=1024)
    got = vlm.write_texts(tiny, rows, prompt(), limits)
    reqs = [vlm.VlmRequest(vlm.fit_pixels(photo(n), 1024), prompt().messages(f"a text about {n}")) for n in PHOTOS[:3]]
    direct = tiny.generate(reqs, max_new_tokens=10)
    assert [w.key for w in got] == [0, 1, 2]
    assert [w.n_tokens for w in got] == [g.n_tokens for g in direct]
    for w, g, r in zip(got, direct, reqs, strict=True):
        checked = llm.check_output(g, r.chat, limits.max_words, False, 10)
        assert (w.text, w.reason) == (checked.text, checked.reason)


def test_vllm_requests_carry_the_rendered_prompt_and_the_image(
    tiny: vlm.TransformersVLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    reqs = requests(2)
    inputs = vlm.vllm_inputs(tiny.processor, reqs)
    assert [i["prompt"] for i in inputs] == [vlm.render(tiny.processor, r.chat) for r in reqs]
    assert [i["multi_modal_data"]["image"] for i in inputs] == [r.image for r in reqs]
    assert all(i["prompt"].count("<|image_pad|>") == 1 for i in inputs)

    # The engine's answers become Generations: "stop" is a finished text, "length" one cut at the limit.
    params: list[dict[str, object]] = []
    fake = types.ModuleType("vllm")

    def sampling_params(**kw: object) -> dict[str, object]:
        params.append(kw)
        return kw

    fake.SamplingParams = sampling_params  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake)

    def completion(text: str, ids: list[int], finish: str) -> object:
        return types.SimpleNamespace(outputs=[types.SimpleNamespace(text=text, token_ids=ids, finish_reason=finish)])

    seen: list[object] = []

    class Engine:
        def generate(self, prompts: list[dict[str, object]], sampling: object, use_tqdm: bool) -> list[object]:
            seen.extend(prompts)
            return [completion("A dog.", [1, 2, 3], "stop"), completion("A cat on", [4, 5], "length")]

    engine = vlm.VllmVLM("tiny-random-vlm", Engine(), tiny.processor, seed=0)
    assert engine.generate(reqs, max_new_tokens=2) == [
        llm.Generation("A dog.", 3, True),
        llm.Generation("A cat on", 2, False),
    ]
    assert seen == inputs
    assert params == [{"temperature": 0.0, "max_tokens": 2, "min_tokens": 0, "seed": 0, "skip_special_tokens": True}]


def test_vllm_backend_without_vllm_fails_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    spec = get_spec(load_registry(REGISTRY), "tiny-random-vlm", kind="vlm")
    with pytest.raises(RuntimeError, match=r"generate.backend is 'vllm' but vllm is not installed"):
        vlm.get_vlm(spec, "cuda:0", backend="vllm")


@pytest.mark.gpu
def test_vllm_backend_writes_the_same_greedy_text_as_transformers() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("vllm")
    spec = get_spec(load_registry(REGISTRY), "tiny-random-vlm", kind="vlm")
    engine = vlm.get_vlm(spec, "cuda:0", "fp32", backend="vllm", gpu_memory_utilization=0.3, max_model_len=1024)
    reqs = requests(4)
    got = engine.generate(reqs, max_new_tokens=12)
    reference = vlm.load_transformers_vlm(spec, "cuda:0", "fp32", batch_size=4).generate(reqs, max_new_tokens=12)
    assert [g.text for g in got] == [g.text for g in reference]
