"""Generate stage in Spark with the tiny random captioner, CLIP, LLM and VLM (their outputs are meaningless as data).

The expected rows come from the same models called directly, without Spark: what the stage must write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realsyn.config import ConfigError, load_config
from realsyn.config_sections import Config, GenerateConfig, GenerateTagsConfig, StorageConfig
from realsyn.contracts import (
    FUNNEL,
    GOLD_CAPTIONS,
    GOLD_IMAGE_TAGS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCES,
    SILVER_TAGS,
)
from realsyn.stages.balance import _key_filter
from realsyn.stages.generate import resolve_models, run_generate
from realsyn.tables import Lakehouse
from tests.realsyn.test_tag_vocabulary import SENTENCES
from tests.support.photos import encode, photo
from tests.support.tables import rows_frame
from udfs import captioner, clip, llm, tagger, vlm
from udfs.models import get_spec, load_registry

REGISTRY = Path(__file__).resolve().parents[3] / "conf" / "models.yaml"
PHOTOS = {"p_astronaut": "astronaut", "p_coffee": "coffee", "p_chelsea": "chelsea", "p_rocket": "rocket"}
# p_rocket has no retrieved text; p_bad has bytes no decoder opens; p_gone points at a sentence no longer there.
RETRIEVED = {"p_astronaut": "s1", "p_coffee": "s3", "p_chelsea": "s5", "p_bad": "s4", "p_gone": "s_missing"}
TAGS = GenerateTagsConfig(base=False, mined_top_n=10, min_document_frequency=1, top_t=3, min_z=0.5)


def config(root: Path, **generate: object) -> Config:
    """Tiny models on CPU, mined tags only (the base list would cost seconds of embedding)."""
    fields = {"tags": TAGS, "device": "cpu", "max_new_tokens": 12, "reject_truncated": False, **generate}
    return Config(storage=StorageConfig(root=str(root)), generate=GenerateConfig(**fields))  # type: ignore[arg-type]


def test_unknown_or_wrong_kind_of_model_and_missing_band_fail_before_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"generate.llm: model 'tiny-random' .* is a clip, not a llm"):
        resolve_models(config(tmp_path, llm="tiny-random"))
    with pytest.raises(ConfigError, match=r"generate.captioner: model 'nope' is not in"):
        resolve_models(config(tmp_path, captioner="nope"))
    cfg = load_config(REGISTRY.parent / "local.yaml", ["embed.model=small-random"])
    with pytest.raises(ConfigError, match=r"generate.similarity_band: model 'small-random' .* has no similarity_band"):
        resolve_models(cfg)
    with pytest.raises(ConfigError, match=r"generate.vlm: model 'tiny-random-captioner' .* is a captioner, not a vlm"):
        resolve_models(config(tmp_path, mode="vlm", vlm="tiny-random-captioner"))
    models = resolve_models(config(tmp_path, mode="vlm", captioner="not-read-in-vlm-mode"))
    assert [s.name for s in models.used] == ["tiny-random", "tiny-random-vlm"]


def expected(images: dict[str, bytes], cfg: GenerateConfig) -> dict[str, dict[str, object]]:
    """Caption, tags, synthetic text and cosine of every image with a retrieved text, from the models directly."""
    reg = load_registry(REGISTRY)
    enc = clip.load_encoder(get_spec(reg, "tiny-random"), "cpu")
    cap = captioner.load_captioner(get_spec(reg, cfg.captioner), "cpu")
    rewriter = llm.load_transformers_llm(get_spec(reg, cfg.llm), "cpu", "auto", batch_size=1)
    vocab = sorted({t for text in SENTENCES.values() for t in tagger.mine_phrases([text], TAGS.parser)[0]})
    tag_vecs = np.concatenate([b.vectors for b in clip.embed_texts(enc, [(t, f"a photo of {t}.") for t in vocab], 64)])
    template = llm.PromptTemplate(cfg.prompt_version, cfg.system_prompt, cfg.user_prompt)
    out: dict[str, dict[str, object]] = {}
    for image_id in ("p_astronaut", "p_coffee", "p_chelsea"):
        [batch] = captioner.caption_images(cap, [(image_id, images[image_id])], 1, cfg.caption_max_new_tokens)
        [vec] = next(clip.embed_images(enc, [(image_id, images[image_id])], 1)).vectors
        [choice] = tagger.top_tags(vec[None], tag_vecs, TAGS.top_t, TAGS.min_z, TAGS.min_cosine)
        tags = [vocab[i] for i in choice.indexes]
        text = SENTENCES[RETRIEVED[image_id]]
        chat = template.messages(text, batch.captions[0], tags)
        [gen] = rewriter.generate([chat], cfg.max_new_tokens)
        syn = llm.check_output(gen, chat, cfg.max_output_words, False, cfg.max_new_tokens).text
        assert syn is not None
        [syn_vec] = next(clip.embed_texts(enc, [(image_id, syn)], 1)).vectors
        out[image_id] = {
            "caption": batch.captions[0],
            "tags": tags,
            "syn_text": syn,
            "cosine": float(np.dot(syn_vec, vec)),
            "image_vec": vec,
        }
    return out


def stage_images() -> dict[str, bytes]:
    """The images of the stage tests: PHOTOS, p_bad (no decoder opens it), p_gone (its sentence is gone)."""
    return {k: encode(photo(v)) for k, v in PHOTOS.items()} | {
        "p_bad": b"\x89PNG broken",
        "p_gone": encode(photo("camera")),
    }


def image_vectors(images: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The tiny CLIP's embedding of every image; p_bad gets a unit vector (the embed stage would have rejected it)."""
    enc = clip.load_encoder(get_spec(load_registry(REGISTRY), "tiny-random"), "cpu")
    vectors = {k: next(clip.embed_images(enc, [(k, v)], 1)).vectors[0] for k, v in images.items() if k != "p_bad"}
    return vectors | {"p_bad": np.full(32, 32**-0.5, dtype=np.float32)}


def write_stage_inputs(lakehouse: Lakehouse, images: dict[str, bytes], vectors: dict[str, np.ndarray]) -> None:
    """silver.images, silver.image_embeddings, silver.sentences and silver.retrieval (RETRIEVED, plus a rank-2 row)."""
    spark = lakehouse.spark
    image_rows = [{"image_id": k, "content": v} for k, v in images.items()]
    lakehouse.overwrite(SILVER_IMAGES, rows_frame(spark, SILVER_IMAGES, image_rows))
    lakehouse.overwrite(
        SILVER_IMAGE_EMBEDDINGS,
        spark.createDataFrame(
            [(k, "tiny-random", [float(x) for x in v]) for k, v in vectors.items()],
            "image_id string, model_id string, embedding array<float>",
        ),
    )
    sentence_rows = [{"sentence_id": k, "text": v} for k, v in SENTENCES.items()]
    lakehouse.overwrite(SILVER_SENTENCES, rows_frame(spark, SILVER_SENTENCES, sentence_rows))
    lakehouse.overwrite(
        SILVER_RETRIEVAL,
        spark.createDataFrame(
            [(i, "tiny-random", 1, s, 0.5, 0) for i, s in RETRIEVED.items()]
            + [("p_coffee", "tiny-random", 2, "s6", 0.4, 0)],
            "image_id string, model_id string, rank int, sentence_id string, score float, leaf_id long",
        ),
    )


def test_generate_end_to_end_rerun_and_new_prompt_version(lakehouse: Lakehouse, tmp_path: Path) -> None:
    images = stage_images()
    cfg = config(Path(lakehouse.storage.root or ""), similarity_band=(-1.0, 1.0))
    want = expected(images, cfg.generate)
    write_stage_inputs(lakehouse, images, image_vectors(images))

    first = run_generate(lakehouse, cfg)
    key = ("tiny-random", "tiny-random-captioner", "tiny-random-llm", "v1")
    kept = {r.image_id: r.asDict() for r in lakehouse.read(GOLD_SYNTHETIC_TEXTS).collect()}
    assert set(kept) == {"p_astronaut", "p_coffee", "p_chelsea"}
    for image_id, row in kept.items():
        w = want[image_id]
        assert (row["model_id"], row["captioner_id"], row["llm_id"], row["prompt_version"]) == key
        assert row["retrieved_sentence_id"] == RETRIEVED[image_id]
        assert row["retrieved_text"] == SENTENCES[RETRIEVED[image_id]]
        assert (row["caption"], row["tags"], row["syn_text"]) == (w["caption"], w["tags"], w["syn_text"])
        assert row["cosine"] == pytest.approx(w["cosine"], abs=1e-5)
    rejects = {r.image_id: (r.reason, r.detail) for r in lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS).collect()}
    assert rejects == {
        "p_rocket": ("no_retrieved_text", "no rank-1 row in silver.retrieval"),
        "p_gone": ("no_retrieved_text", "sentence not in silver.sentences: s_missing"),
        "p_bad": ("not_an_image", "not a recognised image format"),
    }
    assert (first.computed, first.captioned, first.kept) == (6, 4, 3)
    assert first.rejected == {"no_retrieved_text": 2, "not_an_image": 1}
    assert {(r.tag, r.source) for r in lakehouse.read(SILVER_TAGS).collect()} == {
        (t, "mined")
        for t in [
            "farmer",
            "tractor",
            "field",
            "river",
            "festival",
            "crowd",
            "festival crowd",
            "bridge",
            "red tractor",
            "people",
        ]
    }
    funnel = [
        (r.step, r.rows_in, r.rows_out)
        for r in lakehouse.read(FUNNEL)
        .filter("stage = 'generate' and prompt_version = 'v1'")
        .orderBy("step_index")
        .collect()
    ]
    assert funnel == [("retrieved_text", 6, 4), ("caption", 4, 3), ("llm_rewrite", 3, 3), ("similarity_band", 3, 3)]

    # A rerun computes nothing and changes nothing.
    tables = (GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS, GOLD_CAPTIONS, GOLD_IMAGE_TAGS, SILVER_TAGS)
    before = {t: sorted(map(str, lakehouse.read(t).collect())) for t in tables}
    again = run_generate(lakehouse, cfg)
    assert (again.computed, again.captioned, again.tokens) == (0, 0, 0)
    assert {t: sorted(map(str, lakehouse.read(t).collect())) for t in tables} == before

    # A new prompt version regenerates every image under it (captions and tags are reused) and leaves v1 alone;
    # its band sits between the three cosines, so one pair is kept and one rejected on each side.
    low_c, mid_c, high_c = sorted(float(w["cosine"]) for w in want.values())  # type: ignore[arg-type]
    band = ((low_c + mid_c) / 2, (mid_c + high_c) / 2)
    v2 = run_generate(lakehouse, config(Path(lakehouse.storage.root or ""), prompt_version="v2", similarity_band=band))
    assert (v2.computed, v2.captioned, v2.kept) == (6, 0, 1)
    assert v2.rejected == {
        "no_retrieved_text": 2,
        "not_an_image": 1,
        "too_dissimilar": 1,
        "too_similar_ocr_like": 1,
    }
    by_cosine = {float(w["cosine"]): k for k, w in want.items()}  # type: ignore[arg-type]
    v2_rejects = {
        r.image_id: r.reason
        for r in lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS).filter("prompt_version = 'v2'").collect()
    }
    assert v2_rejects[by_cosine[low_c]] == "too_dissimilar"
    assert v2_rejects[by_cosine[high_c]] == "too_similar_ocr_like"
    [v2_kept] = lakehouse.read(GOLD_SYNTHETIC_TEXTS).filter("prompt_version = 'v2'").collect()
    assert v2_kept.image_id == by_cosine[mid_c]
    v1_rows = lakehouse.read(GOLD_SYNTHETIC_TEXTS).filter("prompt_version = 'v1'")
    assert sorted(map(str, v1_rows.collect())) == before[GOLD_SYNTHETIC_TEXTS]


def expected_vlm(images: dict[str, bytes], vectors: dict[str, np.ndarray], cfg: GenerateConfig) -> dict[str, object]:
    """image_id -> (syn_text, cosine) of every image with a retrieved text and decodable bytes, from the VLM and the
    CLIP text tower called directly."""
    reg = load_registry(REGISTRY)
    enc = clip.load_encoder(get_spec(reg, "tiny-random"), "cpu")
    writer = vlm.load_transformers_vlm(get_spec(reg, cfg.vlm, kind="vlm"), "cpu", "auto", batch_size=1)
    prompt = vlm.VlmPrompt(cfg.vlm_prompt_version, cfg.vlm_system_prompt, cfg.vlm_user_prompt)
    limits = vlm.VlmLimits(
        cfg.max_new_tokens, max_words=cfg.max_output_words, reject_truncated=False, image_pixels=cfg.vlm_image_pixels
    )
    rows: list[tuple[str, bytes, str, list[str]]] = [
        (k, images[k], SENTENCES[RETRIEVED[k]], []) for k in ("p_astronaut", "p_coffee", "p_chelsea")
    ]
    out: dict[str, object] = {}
    for w in vlm.write_texts(writer, rows, prompt, limits):
        assert w.text is not None
        [text_vec] = next(clip.embed_texts(enc, [(w.key, w.text)], 1)).vectors
        out[w.key] = (w.text, pytest.approx(float(np.dot(text_vec, vectors[w.key])), abs=1e-5))
    return out


def test_vlm_mode_writes_under_its_own_key_and_switching_back_mixes_nothing(lakehouse: Lakehouse) -> None:
    spark = lakehouse.spark
    root = Path(lakehouse.storage.root or "")
    images = stage_images()
    vectors = image_vectors(images)
    write_stage_inputs(lakehouse, images, vectors)
    # What an earlier pipeline-mode run left: a row for every image under the pipeline key (written here directly).
    pipeline = config(root, similarity_band=(-1.0, 1.0))
    pipeline_key = pipeline.generate.key("tiny-random").columns()
    made_of = {"retrieved_sentence_id": "s1", "retrieved_text": "t", "caption": "c", "tags": [], "cosine": 0.1}
    kept = [{"image_id": k, **pipeline_key, **made_of, "syn_text": "old"} for k in PHOTOS if k != "p_rocket"]
    gone = [{"image_id": k, **pipeline_key, "reason": "no_retrieved_text"} for k in ("p_rocket", "p_bad", "p_gone")]
    lakehouse.overwrite(GOLD_SYNTHETIC_TEXTS, rows_frame(spark, GOLD_SYNTHETIC_TEXTS, kept))
    lakehouse.overwrite(GOLD_SYNTHETIC_TEXT_REJECTS, rows_frame(spark, GOLD_SYNTHETIC_TEXT_REJECTS, gone))

    # One task: one Python worker loads the VLM (two would load it twice on this 2-core runner).
    cfg = config(root, mode="vlm", similarity_band=(-1.0, 1.0), vlm_image_pixels=1024, vlm_batch_size=2, partitions=1)
    want = expected_vlm(images, vectors, cfg.generate)
    first = run_generate(lakehouse, cfg)
    assert str(first).startswith("generate [tiny-random | vlm tiny-random-vlm | prompt vlm-v1]: 6 images this run")
    assert (first.computed, first.captioned, first.tags, first.kept) == (6, 0, 10, 3)
    assert first.rejected == {"no_retrieved_text": 2, "not_an_image": 1}
    key = {"model_id": "tiny-random", "captioner_id": "tiny-random-vlm", "llm_id": "tiny-random-vlm"}
    key |= {"prompt_version": "vlm-v1"}
    vlm_rows = lakehouse.read(GOLD_SYNTHETIC_TEXTS).filter(_key_filter(cfg)).collect()
    assert {r.image_id: (r.syn_text, r.cosine) for r in vlm_rows} == want
    for row in vlm_rows:
        assert {c: row[c] for c in key} == key
        assert (row.retrieved_sentence_id, row.caption, row.tags) == (RETRIEVED[row.image_id], "", [])
    rejects = lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS).filter(_key_filter(cfg)).collect()
    assert {r.image_id: (r.reason, r.detail) for r in rejects} == {
        "p_rocket": ("no_retrieved_text", "no rank-1 row in silver.retrieval"),
        "p_gone": ("no_retrieved_text", "sentence not in silver.sentences: s_missing"),
        "p_bad": ("not_an_image", "not a recognised image format"),
    }
    # No captioner ran; the tagger did (balance reads its tags), but the default VLM prompt has no {tags}.
    assert lakehouse.read(GOLD_CAPTIONS).count() == 0
    tagged = {r.image_id for r in lakehouse.read(GOLD_IMAGE_TAGS).collect()}
    assert tagged == {"p_astronaut", "p_coffee", "p_chelsea", "p_bad"}
    funnel = lakehouse.read(FUNNEL).filter("stage = 'generate'").orderBy("step_index").collect()
    assert [(r.captioner, r.llm, r.prompt_version, r.step, r.rows_in, r.rows_out) for r in funnel] == [
        ("tiny-random-vlm", "tiny-random-vlm", "vlm-v1", step, rows_in, rows_out)
        for step, rows_in, rows_out in [
            ("retrieved_text", 6, 4),
            ("decode_image", 4, 3),
            ("vlm_write", 3, 3),
            ("similarity_band", 3, 3),
        ]
    ]

    # A rerun computes nothing; switching back to pipeline mode finds its own rows done and changes no row.
    tables = (GOLD_SYNTHETIC_TEXTS, GOLD_SYNTHETIC_TEXT_REJECTS, GOLD_IMAGE_TAGS, SILVER_TAGS)
    before = {t: sorted(map(str, lakehouse.read(t).collect())) for t in tables}
    again = run_generate(lakehouse, cfg)
    assert (again.computed, again.tokens, again.kept) == (0, 0, 3)
    back = run_generate(lakehouse, pipeline)
    assert (back.computed, back.kept, back.rejected) == (0, 3, {"no_retrieved_text": 3})
    assert {t: sorted(map(str, lakehouse.read(t).collect())) for t in tables} == before
    old = lakehouse.read(GOLD_SYNTHETIC_TEXTS).filter(_key_filter(pipeline)).collect()
    assert sorted((r.image_id, r.syn_text) for r in old) == sorted((k, "old") for k in PHOTOS if k != "p_rocket")


def test_prompt_without_its_placeholders_fails_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"local.yaml: generate: Value error, generate.user_prompt must hold \{tags"):
        load_config(REGISTRY.parent / "local.yaml", ["generate.user_prompt=Rewrite {retrieved_text} with {caption}"])
    with pytest.raises(ConfigError, match=r"generate.tags.prompt_template must hold \{tag\}"):
        load_config(REGISTRY.parent / "local.yaml", ["generate.tags.prompt_template=a photo"])
