"""The LLM rewrite: golden prompt, batched left-padded generation on the tiny random Llama, output checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from realsyn.config import load_config
from udfs import llm
from udfs.models import get_spec, load_registry

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "conf" / "models.yaml"
GOLDEN = ROOT / "tests" / "data" / "generate_prompt_v1.txt"


@pytest.fixture(scope="module")
def tiny() -> llm.TransformersLLM:
    """The tiny random LLM of the registry on CPU, batches of 3."""
    spec = get_spec(load_registry(REGISTRY), "tiny-random-llm", kind="llm")
    return llm.load_transformers_llm(spec, "cpu", "auto", batch_size=3)


def template() -> llm.PromptTemplate:
    g = load_config(ROOT / "conf" / "local.yaml").generate
    return llm.PromptTemplate(g.prompt_version, g.system_prompt, g.user_prompt)


def test_prompt_of_the_demo_config_matches_the_golden_file(tiny: llm.TransformersLLM) -> None:
    chat = template().messages(
        "  The Golden Gate Bridge in San Francisco, opened in 1937.  ",
        "a red bridge over the water",
        ["bridge", "water", "fog"],
    )
    assert llm.render(tiny.tokenizer, chat) == GOLDEN.read_text(encoding="utf-8")
    assert template().messages("t", "c", [])[-1]["content"].endswith("Tags: none")


def test_batched_generation_equals_one_prompt_at_a_time(tiny: llm.TransformersLLM) -> None:
    chats = [
        template().messages(f"retrieved text number {i}" + " more" * i, f"caption {i}", ["dog"] * (i % 3))
        for i in range(7)
    ]
    got = tiny.generate(chats, max_new_tokens=16)
    for chat, gen in zip(chats, got, strict=True):
        ids = tiny.tokenizer(llm.render(tiny.tokenizer, chat), add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = tiny.model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=[5])
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        end = new.index(5) if 5 in new else None
        assert gen.finished == (end is not None)
        assert gen.text == tiny.tokenizer.decode(new[:end], skip_special_tokens=True)
        assert gen.n_tokens == (len(new) if end is None else end + 1)
    fixed = tiny.generate(chats[:2], max_new_tokens=10, min_new_tokens=10)
    assert [g.n_tokens for g in fixed] == [10, 10]


def test_out_of_memory_halves_the_generation_batch(tiny: llm.TransformersLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    chats = [template().messages(f"text {i}", "c", []) for i in range(3)]
    expected = tiny.generate(chats, max_new_tokens=8)
    real = tiny.model.generate
    sizes: list[int] = []

    def limited(input_ids: torch.Tensor, **kw: object) -> torch.Tensor:
        sizes.append(int(input_ids.shape[0]))
        if input_ids.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(tiny.model, "generate", limited)
    assert tiny.generate(chats, max_new_tokens=8) == expected
    assert sizes == [3, 1, 1, 1]


CHAT = [
    {"role": "system", "content": "Rewrite it."},
    {"role": "user", "content": "Retrieved text: a dog\nCaption: dog"},
]


@pytest.mark.parametrize(
    ("text", "finished", "expected"),
    [
        ("A brown dog on a beach.", True, llm.Checked("A brown dog on a beach.")),
        ("  A dog\n\n on sand. ", False, llm.Checked("A dog on sand.")),
        ("Rewrite it. Retrieved text: a dog Caption: dog A dog.", True, llm.Checked("A dog.")),
        (
            "Retrieved text: a dog\nCaption: dog",
            True,
            llm.Checked(None, llm.REASON_PROMPT_ECHO, "the output only repeats the prompt"),
        ),
        ("   \n", True, llm.Checked(None, llm.REASON_EMPTY_OUTPUT, "3 tokens, no visible text")),
        (
            "caf\ufffd",
            True,
            llm.Checked(None, llm.REASON_INVALID_UTF8, "the model's tokens do not decode to valid UTF-8"),
        ),
        (
            "bad \udc80 surrogate",
            True,
            llm.Checked(None, llm.REASON_INVALID_UTF8, "the model's tokens do not decode to valid UTF-8"),
        ),
        ("w " * 6, True, llm.Checked("w w w w w w")),
        ("w " * 7, True, llm.Checked(None, llm.REASON_OVER_LONG, "7 words > max_output_words = 6")),
    ],
)
def test_output_checks(text: str, finished: bool, expected: llm.Checked) -> None:
    assert llm.check_output(llm.Generation(text, 3, finished), CHAT, 6, False, 40) == expected


def test_truncated_output_is_rejected_when_asked() -> None:
    gen = llm.Generation("A dog on a", 40, finished=False)
    assert llm.check_output(gen, CHAT, 50, True, 40) == llm.Checked(
        None, llm.REASON_TRUNCATED, "no end of text within max_new_tokens = 40"
    )


@pytest.mark.gpu
def test_vllm_backend_writes_the_same_greedy_text_as_transformers() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("vllm")
    spec = get_spec(load_registry(REGISTRY), "tiny-random-llm", kind="llm")
    engine = llm.get_llm(spec, "cuda:0", "fp32", backend="vllm", gpu_memory_utilization=0.3, max_model_len=1024)
    chats = [template().messages(f"text {i}", "a caption", ["tag"]) for i in range(4)]
    got = engine.generate(chats, max_new_tokens=12)
    reference = llm.load_transformers_llm(spec, "cuda:0", "fp32", batch_size=4).generate(chats, max_new_tokens=12)
    assert [g.text for g in got] == [g.text for g in reference]
    fixed = engine.generate(chats, max_new_tokens=12, min_new_tokens=12)
    assert [g.n_tokens for g in fixed] == [12] * 4
