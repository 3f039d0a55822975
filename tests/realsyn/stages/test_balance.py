"""Balance stage on tiny corpora whose gold rows are known: rejects, texts by rank, URLs, scales, seeds."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from realsyn.config import ConfigError, load_config
from realsyn.config_sections import BalanceScaleConfig, Config
from realsyn.contracts import FUNNEL, GOLD_CONCEPT_COUNTS, GOLD_DATASET, GOLD_DATASET_REJECTS, GOLD_IMAGE_TAGS
from realsyn.stages.balance import run_balance
from realsyn.tables import Lakehouse
from tests.support.gold_data import Img, picture, write_inputs, write_rows

BALANCE_STEP = ("step_index", "step", "rows_in", "rows_out", "rows_rejected")


def make_cfg(lakehouse: Lakehouse, **balance: Any) -> Config:
    return Config.model_validate(
        {"storage": {"root": lakehouse.storage.root}, "embed": {"model": "m"}, "balance": balance}
    )


def tiny_corpus() -> list[Img]:
    return [
        Img("a", [("d2", 5, "http://x/a2.jpg"), ("d1", 3, "http://x/a1.jpg")], 10, ["t1", "t2", "t3"], "syn a"),
        Img("b", [("d1", 1, "http://x/b.jpg")], 10, ["t4"], "syn b", seed=1),
        Img("c", [("d3", 0, "http://x/c.png")], 11, ["t1", "t5", "t6"], "syn c", fmt="PNG", seed=2),
        Img("d", [("d3", 2, "http://x/d.jpg")], 11, ["t7"], syn_reject=("cosine_out_of_range", "0.70 > 0.61"), seed=3),
        Img("e", [("d4", 0, "http://x/e.jpg")], 11, ["t7"], seed=4),
        Img("f", [("d4", 1, "http://x/f.jpg")], 11, [], "syn f", seed=5),
        Img("g", [("d4", 2, "http://x/g.jpg")], None, ["t2"], "syn g", seed=6),
    ]


def test_gold_rows_rejects_and_funnel(lakehouse: Lakehouse) -> None:
    cfg = make_cfg(lakehouse, scales={"tiny": {"cap": 1}, "full": {"target": 3}})
    write_inputs(lakehouse, cfg, tiny_corpus(), leaf_parents={10: 0, 11: 1})
    summary = run_balance(lakehouse, cfg)

    spark = lakehouse.spark
    # Leaf 10 holds a and b; the random order is xxhash64(image_id, seed).
    hashes = {
        r["id"]: r["h"]
        for r in spark.sql("SELECT id, xxhash64(id, 0) AS h FROM VALUES ('a'), ('b') AS t(id)").collect()
    }
    first_in_10 = min(("a", "b"), key=lambda i: (hashes[i], i))
    rank = {"a": 0 if first_in_10 == "a" else 1, "b": 0 if first_in_10 == "b" else 1, "c": 0}
    refs_a = [Row(doc_id="d1", position=3, url="http://x/a1.jpg"), Row(doc_id="d2", position=5, url="http://x/a2.jpg")]
    key = ("m", "tiny-random-captioner", "tiny-random-llm", "v1")
    expected = [
        ("a", "http://x/a1.jpg", "t1", "t2", "t3", "syn a", 0, 10, rank["a"], rank["a"] < 1, True, ["d1", "d2"],
         refs_a),
        ("b", "http://x/b.jpg", "t4", None, None, "syn b", 0, 10, rank["b"], rank["b"] < 1, True, ["d1"],
         [Row(doc_id="d1", position=1, url="http://x/b.jpg")]),
        ("c", "http://x/c.png", "t1", "t5", "t6", "syn c", 1, 11, 0, True, True, ["d3"],
         [Row(doc_id="d3", position=0, url="http://x/c.png")]),
    ]  # fmt: skip
    got = lakehouse.read(GOLD_DATASET).select(
        "image_id", "raw_image_url", "text1", "text2", "text3", "syn_text", "coarse_id", "leaf_id", "cluster_rank",
        "scale_tiny", "scale_full", "doc_ids", "source_refs",
    )  # fmt: skip
    schema = got.schema
    assertDataFrameEqual(got, spark.createDataFrame([Row(*r) for r in expected], schema))
    lineage = lakehouse.read(GOLD_DATASET).select("model_id", "captioner_id", "llm_id", "prompt_version").distinct()
    assert [tuple(r) for r in lineage.collect()] == [key]
    assert {r["image_id"]: r["format"] for r in lakehouse.read(GOLD_DATASET).collect()} == {
        "a": "JPEG", "b": "JPEG", "c": "PNG"
    }  # fmt: skip

    rejects = lakehouse.read(GOLD_DATASET_REJECTS).select("image_id", "reason", "detail")
    assertDataFrameEqual(
        rejects,
        [
            Row(image_id="d", reason="synthetic_text_rejected", detail="cosine_out_of_range: 0.70 > 0.61"),
            Row(image_id="e", reason="no_synthetic_text", detail="no row in gold.synthetic_texts under this key"),
            Row(image_id="f", reason="no_retrieved_text", detail="no row in silver.retrieval for model m"),
            Row(image_id="g", reason="no_cluster", detail="no leaf in silver.image_clusters for model m"),
        ],
    )
    funnel = lakehouse.read(FUNNEL).filter(F.col("stage") == "balance").select(*BALANCE_STEP)
    assertDataFrameEqual(
        funnel,
        [
            Row(step_index=0, step="synthetic_text", rows_in=7, rows_out=5, rows_rejected=2),
            Row(step_index=1, step="retrieved_text", rows_in=5, rows_out=4, rows_rejected=1),
            Row(step_index=2, step="cluster_images", rows_in=4, rows_out=3, rows_rejected=1),
            Row(step_index=3, step="scale[tiny]", rows_in=3, rows_out=2, rows_rejected=1),
            Row(step_index=4, step="scale[full]", rows_in=3, rows_out=3, rows_rejected=0),
        ],
    )
    assert summary.images == 7 and summary.kept == 3
    assert summary.rejected == {
        "synthetic_text_rejected": 1, "no_synthetic_text": 1, "no_retrieved_text": 1, "no_cluster": 1
    }  # fmt: skip
    assert "3 rows in gold.dataset" in str(summary)

    # A rerun gives the same tables (no duplicates).
    before = lakehouse.read(GOLD_DATASET).collect()
    run_balance(lakehouse, cfg)
    assertDataFrameEqual(lakehouse.read(GOLD_DATASET), before)
    assert lakehouse.read(GOLD_DATASET_REJECTS).count() == 4


# Nine leaves under three coarse clusters, Zipf-like sizes.
SKEW = [120, 60, 40, 30, 24, 20, 17, 15, 13]
SKEW_PARENTS = {leaf: leaf // 3 for leaf in range(9)}


def skewed_corpus() -> list[Img]:
    content = picture(0)
    return [
        Img(f"L{leaf}-{i:03d}", [(f"doc{leaf}", i, f"http://x/{leaf}/{i}.jpg")], leaf, ["t"], "s", content=content)
        for leaf, n in enumerate(SKEW)
        for i in range(n)
    ]


def members(lakehouse: Lakehouse, column: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for r in lakehouse.read(GOLD_DATASET).filter(F.col(column)).select("leaf_id", "image_id").collect():
        out.setdefault(int(r["leaf_id"]), set()).add(r["image_id"])
    return out


def test_scales_flatten_a_skewed_distribution_and_follow_the_seed(lakehouse: Lakehouse) -> None:
    scales = {"cap10": {"cap": 10}, "n50": {"target": 50}, "top60": {"target": 60, "hierarchical": True}}
    cfg = make_cfg(lakehouse, scales=scales)
    write_inputs(lakehouse, cfg, skewed_corpus(), leaf_parents=SKEW_PARENTS)
    summary = run_balance(lakehouse, cfg)

    cap10 = members(lakehouse, "scale_cap10")
    assert {leaf: len(m) for leaf, m in cap10.items()} == dict.fromkeys(range(9), 10)
    n50 = Counter({leaf: len(m) for leaf, m in members(lakehouse, "scale_n50").items()})
    assert sum(n50.values()) == 50 and set(n50.values()) <= {5, 6}  # water-filling cap 5, 5 leaves get one more
    top = {leaf: len(m) for leaf, m in members(lakehouse, "scale_top60").items()}
    for coarse in range(3):  # 20 per coarse cluster, split 7 / 7 / 6 over its three leaves
        assert sorted(top[leaf] for leaf in range(3 * coarse, 3 * coarse + 3)) == [6, 7, 7]
    by_name = {s.name: s for s in summary.scales}
    assert by_name["cap10"].max_over_median_before == pytest.approx(120 / 24)
    assert by_name["cap10"].max_over_median_after == 1.0
    assert by_name["n50"].max_over_median_after <= 6 / 5
    # One order for every scale: cap 10 keeps a subset of what a target that allows more keeps in each leaf.
    assert all(cap10[leaf] >= members(lakehouse, "scale_n50")[leaf] for leaf in range(9))

    # The same seed gives the same members; another seed other members (within the big leaf).
    run_balance(lakehouse, cfg)
    assert members(lakehouse, "scale_cap10") == cap10
    run_balance(lakehouse, make_cfg(lakehouse, scales=scales, seed=1))
    reseeded = members(lakehouse, "scale_cap10")
    assert reseeded[0] != cap10[0] and {leaf: len(m) for leaf, m in reseeded.items()} == dict.fromkeys(range(9), 10)


def test_closest_to_centroid_keeps_the_planted_nearest(lakehouse: Lakehouse) -> None:
    def at(angle_deg: float, axis: int) -> list[float]:
        a = np.deg2rad(angle_deg)
        v = [float(np.cos(a)), float(np.sin(a))]
        return v if axis == 0 else v[::-1]

    # Leaf 0 centred on x, leaf 1 on y; ids are chosen so that id order is not the planted order.
    angles = {0: {"z0": 5, "a0": 60, "m0": 10, "b0": 80}, 1: {"y1": 1, "c1": 40, "x1": 20}}
    imgs = [
        Img(iid, [("d", n, f"http://x/{iid}")], leaf, ["t"], "s", embedding=at(deg, leaf), seed=n)
        for leaf, group in angles.items()
        for n, (iid, deg) in enumerate(group.items())
    ]
    cfg = make_cfg(lakehouse, selection="closest", scales={"two": {"cap": 2}})
    write_inputs(lakehouse, cfg, imgs, leaf_parents={0: 0, 1: 0}, leaf_vectors={0: [1.0, 0.0], 1: [0.0, 1.0]})
    run_balance(lakehouse, cfg)
    assert members(lakehouse, "scale_two") == {0: {"z0", "m0"}, 1: {"y1", "x1"}}
    ranks = {r["image_id"]: r["cluster_rank"] for r in lakehouse.read(GOLD_DATASET).collect()}
    assert ranks == {"z0": 0, "m0": 1, "a0": 2, "b0": 3, "y1": 0, "x1": 1, "c1": 2}


def test_missing_synthetic_texts_stop_the_stage(lakehouse: Lakehouse) -> None:
    cfg = make_cfg(lakehouse, scales={"tiny": {"cap": 1}})
    write_inputs(lakehouse, cfg, tiny_corpus()[:2], leaf_parents={10: 0}, synthetic_texts=False)
    with pytest.raises(RuntimeError, match=r"gold\.synthetic_texts does not exist: run the generate stage"):
        run_balance(lakehouse, cfg)
    assert not lakehouse.exists(GOLD_DATASET)


def test_bad_scale_config_names_the_key(tmp_path: Any) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("storage: {root: x}\nbalance: {scales: {small: {cap: 2, target: 5}}}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: balance\.scales\.small.*exactly one of cap"):
        load_config(conf)
    conf.write_text("storage: {root: x}\nbalance: {scales: {Big-One: {cap: 2}}}\n")
    with pytest.raises(ConfigError, match=r"balance.*Big-One"):
        load_config(conf)


# Texts with known entries of the vocabulary "cat", "red car", "dog": whole words, case-folded, in any of the four
# texts. "Cats" and "scatter" are no match.
ENTRY_TEXTS = (
    [["A cat sat on the mat."]] * 12
    + [["The RED car stopped."]] * 3
    + [["A dog and a cat."]] * 2
    + [["Cats scatter."]] * 3
)


def entry_corpus() -> list[Img]:
    imgs = [
        Img(f"p{i:02d}", [("d", i, f"http://x/{i}.jpg")], 10, texts, f"syn {i}", seed=i)
        for i, texts in enumerate(ENTRY_TEXTS)
    ]
    # One match in the synthetic text only, written with a hyphen.
    imgs.append(Img("p20", [("d", 20, "http://x/20.jpg")], 10, ["Nothing to see."], "It is a Red-Car!", seed=20))
    # No n-gram spans two texts: "red" ends one, "car" begins the next.
    imgs.append(Img("p21", [("d", 21, "http://x/21.jpg")], 10, ["Painted red", "Car keys."], "keys", seed=21))
    return imgs


def draws(lakehouse: Lakehouse, ids: list[str], seed: int) -> dict[str, float]:
    """The documented draw of every pair: the low 53 bits of xxhash64(image_id, seed), as a uniform in (0, 1)."""
    rows = lakehouse.spark.createDataFrame([(i,) for i in ids], "id string").select(
        "id", F.xxhash64("id", F.lit(seed)).alias("h")
    )
    return {r["id"]: ((r["h"] & ((1 << 53) - 1)) + 0.5) / 2**53 for r in rows.collect()}


def test_entries_scales_keep_each_pair_with_metaclip_probability(lakehouse: Lakehouse, tmp_path: Any) -> None:
    vocab = tmp_path / "entries.txt"
    vocab.write_text("# entries\ncat\nRed car\ndog\nunicorn\n")
    common = {"by": "entries", "vocabulary": str(vocab)}
    scales = {
        "meta": {**common, "t": 3},
        "meta7": {**common, "target": 7},
        "own": {**common, "t": 3, "unmatched": "own_entry"},
    }
    cfg = make_cfg(lakehouse, scales={"missing": {"by": "entries", "t": 3, "vocabulary": str(tmp_path / "no.txt")}})
    images = entry_corpus()
    write_inputs(lakehouse, cfg, images, leaf_parents={10: 0})
    with pytest.raises(ConfigError, match=r"balance\.scales\.missing\.vocabulary: cannot read .*no\.txt"):
        run_balance(lakehouse, cfg)
    assert not lakehouse.exists(GOLD_DATASET)

    cfg = make_cfg(lakehouse, scales=scales)
    summary = run_balance(lakehouse, cfg)
    counts = {
        (r["scale"], r["concept"]): (r["rank"], r["count_before"])
        for r in lakehouse.read(GOLD_CONCEPT_COUNTS).collect()
    }
    assert {c: v for (s, c), v in counts.items() if s == "meta"} == {"cat": (1, 14), "red car": (2, 4), "dog": (3, 2)}
    assert counts[("own", "<unmatched>")] == (2, 4)  # after cat (14), tied with red car (4) and first by name

    ids = [img.image_id for img in images]
    u = draws(lakehouse, ids, 0)
    entries = {i: [] for i in ids}  # type: dict[str, list[int]]
    for i in range(12):
        entries[f"p{i:02d}"] = [14]
    for i in (12, 13, 14, 20):
        entries[f"p{i:02d}"] = [4]
    for i in (15, 16):
        entries[f"p{i:02d}"] = [14, 2]
    own = {**entries, **{f"p{i:02d}": [4] for i in (17, 18, 19, 21)}}

    def p(cs: list[int], t: float) -> float:
        return 1 - float(np.prod([1 - min(1.0, t / c) for c in cs])) if cs else 0.0

    dataset = lakehouse.read(GOLD_DATASET)
    got = {name: {r["image_id"] for r in dataset.filter(F.col(f"scale_{name}")).collect()} for name in scales}
    assert got["meta"] == {i for i in ids if u[i] < p(entries[i], 3)}
    assert got["own"] == {i for i in ids if u[i] < p(own[i], 3)}
    assert {"p15", "p16"} <= got["meta"]  # the dog has 2 < t pairs: both are kept whatever the cat says

    # A target keeps the pairs that enter at the 7 smallest t: u * count for one entry; for cat (14) and dog (2)
    # below t = 2, (1 - t/14)(1 - t/2) = 1 - u gives t^2 - 16 t + 28 u = 0.
    def t_star(i: str) -> float:
        cs = entries[i]
        if not cs:
            return np.inf
        return u[i] * cs[0] if len(cs) == 1 else 8 - np.sqrt(64 - 28 * u[i])

    assert got["meta7"] == set(sorted(ids, key=t_star)[:7])
    found = next(s for s in summary.scales if s.name == "meta7")
    assert found.rows == 7 and found.t == pytest.approx(sorted(map(t_star, ids))[6])
    meta = next(s for s in summary.scales if s.name == "meta")
    assert meta.concepts == 3 and meta.head_share_before == pytest.approx(14 / 20) and meta.t is None
    assert "top 1% of 3 concepts hold 70.0%" in str(summary)

    # Another seed draws another sample of the same size.
    reseeded = make_cfg(lakehouse, scales=scales, seed=1)
    run_balance(lakehouse, reseeded)
    again = {r["image_id"] for r in lakehouse.read(GOLD_DATASET).filter(F.col("scale_meta7")).collect()}
    assert len(again) == 7 and again != got["meta7"]


def test_concepts_scale_draws_by_inverse_concept_frequency(lakehouse: Lakehouse) -> None:
    scales = {"inv": {"by": "concepts", "target": 6, "top_k": 1}}
    cfg = make_cfg(lakehouse, scales=scales)
    images = [Img(f"q{i:02d}", [("d", i, f"http://x/{i}.jpg")], 10, ["t"], "s", seed=i) for i in range(21)]
    write_inputs(lakehouse, cfg, images, leaf_parents={10: 0})
    with pytest.raises(RuntimeError, match=r"gold\.image_tags does not exist"):
        run_balance(lakehouse, cfg)
    # 16 images of a common concept, 4 of a rare one (their second tag is beyond top_k), one without a tag.
    tags = {f"q{i:02d}": ["common", "rare"] if i < 16 else ["rare"] for i in range(20)}
    tags["q20"] = []
    write_rows(
        lakehouse,
        GOLD_IMAGE_TAGS,
        [(i, "m", t, [0.3] * len(t)) for i, t in tags.items()] + [("q00", "other-model", ["rare"], [0.9])],
    )
    run_balance(lakehouse, cfg)

    u = draws(lakehouse, list(tags), 0)
    weight = {i: 1 / 16 if t[:1] == ["common"] else 1 / 4 for i, t in tags.items() if t}
    expected = sorted(weight, key=lambda i: (-np.log(u[i]) / weight[i], i))[:6]
    got = {r["image_id"] for r in lakehouse.read(GOLD_DATASET).filter(F.col("scale_inv")).collect()}
    assert got == set(expected)
    counts = {
        r["concept"]: (r["count_before"], r["count_after"]) for r in lakehouse.read(GOLD_CONCEPT_COUNTS).collect()
    }
    assert counts == {
        "common": (16, sum(tags[i] == ["common", "rare"] for i in got)),
        "rare": (4, sum(tags[i] == ["rare"] for i in got)),
    }


def test_concept_scale_config_names_the_key(tmp_path: Any) -> None:
    conf = tmp_path / "c.yaml"
    for scale, message in (
        ("{by: entries, cap: 3}", "by: entries takes exactly one of t and target"),
        ("{by: concepts, t: 3}", "by: concepts takes exactly one of target"),
        ("{by: entries, target: 3, hierarchical: true}", "hierarchical quotas need by: clusters"),
        ("{by: words, target: 3}", "by"),
    ):
        conf.write_text(f"storage: {{root: x}}\nbalance: {{scales: {{s: {scale}}}}}\n")
        with pytest.raises(ConfigError, match=rf"c\.yaml: balance\.scales\.s.*{message}"):
            load_config(conf)


def test_a_scale_describes_itself_by_the_keys_of_its_kind() -> None:
    assert BalanceScaleConfig(cap=3).settings() == {"by": "clusters", "cap": 3, "hierarchical": False}
    assert BalanceScaleConfig(by="entries", t=20_000).settings() == {
        "by": "entries", "t": 20_000.0, "vocabulary": "tags", "unmatched": "drop"
    }  # fmt: skip
    assert BalanceScaleConfig(by="concepts", target=9, top_k=2).settings() == {
        "by": "concepts", "target": 9, "top_k": 2, "unmatched": "drop"
    }  # fmt: skip


def test_a_vlm_run_pairs_and_names_the_vlm_key(lakehouse: Lakehouse) -> None:
    cfg = Config.model_validate(
        {
            "storage": {"root": lakehouse.storage.root},
            "embed": {"model": "m"},
            "generate": {"mode": "vlm", "vlm": "a-vlm", "vlm_prompt_version": "vv"},
        }
    )
    write_inputs(lakehouse, cfg, tiny_corpus()[:3], leaf_parents={10: 0, 11: 1})
    run_balance(lakehouse, cfg)
    lineage = lakehouse.read(GOLD_DATASET).select("image_id", "model_id", "captioner_id", "llm_id", "prompt_version")
    assert sorted(tuple(r) for r in lineage.collect()) == [(i, "m", "a-vlm", "a-vlm", "vv") for i in "abc"]
