"""The generate stage's model frames that need no captioner or LLM: the tagger, the similarity band and the tag
embedding, with the tiny random CLIP model (its vectors are meaningless as data). The captioner and LLM frames run
in tests/realsyn/stages/test_generate.py, against the models called directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import SparkSession

from realsyn.config_sections import GenerateConfig, GenerateTagsConfig
from realsyn.contracts import SILVER_TAGS
from realsyn.synthetic_frames import embed_tag_frame, score_frame, tag_frame
from udfs import clip, similarity, tagger
from udfs.models import get_spec, load_registry

REGISTRY = Path(__file__).resolve().parents[2] / "conf" / "models.yaml"
GCFG = GenerateConfig(device="cpu", tags=GenerateTagsConfig(top_t=2, min_z=0.5))


@pytest.fixture(scope="module")
def spec() -> clip.ModelSpec:
    """The tiny random CLIP model of conf/models.yaml."""
    return get_spec(load_registry(REGISTRY), "tiny-random")


@pytest.fixture(scope="module")
def encoder(spec: clip.ModelSpec) -> clip.Encoder:
    """The same model, called directly."""
    return clip.load_encoder(spec, "cpu")


def unit(v: np.ndarray) -> list[float]:
    return [float(x) for x in v / np.linalg.norm(v)]


def test_score_frame_dots_the_text_vector_with_the_image_and_judges_the_band(
    spark: SparkSession, spec: clip.ModelSpec, encoder: clip.Encoder
) -> None:
    text = "A red tractor crosses the bridge."
    [t] = encoder.encode_texts(encoder.tokenize([text]))
    other = np.random.default_rng(0).standard_normal(t.shape).astype(np.float32)
    across = other - float(other @ t) * t  # orthogonal to the text vector: cosine 0, inside the band
    rows = [
        ("same", text, unit(t)),
        ("opposite", text, unit(-t)),
        ("across", text, unit(across)),
        ("no_image", text, None),
        ("blank", "  ", unit(t)),
    ]
    df = spark.createDataFrame(rows, "image_id string, syn_text string, embedding array<float>").repartition(2)
    low, high = -0.5, 0.5
    got = {r["image_id"]: r for r in score_frame(df, GCFG, "auto", 2, spec, (low, high)).collect()}

    assert got["same"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert got["opposite"]["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert got["across"]["cosine"] == pytest.approx(0.0, abs=1e-5)
    reasons = {k: (r["reason"], r["detail"]) for k, r in got.items()}
    cos = {k: r["cosine"] for k, r in got.items()}
    assert reasons == {
        "same": (similarity.REASON_TOO_SIMILAR, similarity.band_detail(cos["same"], low, high)),
        "opposite": (similarity.REASON_TOO_DISSIMILAR, similarity.band_detail(cos["opposite"], low, high)),
        "across": (None, None),
        "no_image": (similarity.REASON_NO_TEXT_EMBEDDING, "cosine none outside [-0.5, 0.5]"),
        "blank": (similarity.REASON_NO_TEXT_EMBEDDING, "cosine none outside [-0.5, 0.5]"),
    }
    assert (cos["no_image"], cos["blank"]) == (None, None)


def test_embed_tag_frame_gives_silver_tags_rows_and_none_for_a_blank_prompt(
    spark: SparkSession, spec: clip.ModelSpec, encoder: clip.Encoder
) -> None:
    rows = [
        ("tractor", "base", 3, "a photo of tractor."),
        ("crowd", "mined", 2, "a photo of crowd."),
        ("nothing", "mined", 1, " "),
        ("river", "mined", 5, "a photo of river."),
    ]
    df = spark.createDataFrame(rows, "tag string, source string, frequency long, prompt string")
    frame = embed_tag_frame(df, GCFG, "auto", 2, spec)
    assert frame.columns == SILVER_TAGS.columns
    got = {r["tag"]: r for r in frame.collect()}
    assert sorted(got) == ["crowd", "river", "tractor"]
    prompts = [p for *_, p in rows if p.strip()]
    expected = dict(zip(prompts, encoder.encode_texts(encoder.tokenize(prompts)), strict=True))
    for tag, source, frequency, prompt in rows:
        if tag in got:
            row = got[tag]
            assert (row["model_id"], row["source"], row["frequency"], row["prompt"]) == (
                "tiny-random",
                source,
                frequency,
                prompt,
            )
            np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected[prompt], atol=1e-5)


def test_tag_frame_picks_the_top_tags_of_each_image(spark: SparkSession) -> None:
    rng = np.random.default_rng(1)
    vocab = ["bridge", "crowd", "river", "tractor", "field"]
    vectors = np.stack([np.asarray(unit(v), np.float32) for v in rng.standard_normal((len(vocab), 8))])
    images = {f"i{i}": unit(v) for i, v in enumerate(rng.standard_normal((4, 8)))}
    images["i_tractor"] = unit(vectors[3] + 0.05 * rng.standard_normal(8))
    df = spark.createDataFrame(list(images.items()), "image_id string, embedding array<float>")
    got = {
        r["image_id"]: (r["model_id"], r["tags"], r["cosines"])
        for r in tag_frame(df, GCFG, "m", vocab, vectors).collect()
    }

    choices = tagger.top_tags(np.asarray(list(images.values()), np.float32), vectors, 2, 0.5)
    assert sorted(got) == sorted(images)
    for image_id, choice in zip(images, choices, strict=True):
        model_id, tags, cosines = got[image_id]
        assert (model_id, tags) == ("m", [vocab[i] for i in choice.indexes])
        assert cosines == pytest.approx(choice.cosines, abs=1e-6)
    assert got["i_tractor"][1][0] == "tractor"
