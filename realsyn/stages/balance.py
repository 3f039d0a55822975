"""Semantic balance sampling (paper section 3.4) and the gold dataset table.

``run_balance`` joins every image of ``silver.images`` with its kept synthetic text (``gold.synthetic_texts``
under the generate stage's key, ``GenerateConfig.key``: ``embed.model`` and the models and prompt version of the
generation mode), its retrieved texts (``silver.retrieval`` + ``silver.sentences``, by rank) and its leaf of the
image k-means tree (``silver.image_clusters``, ``silver.image_centroids``). An image without one of these goes to
``gold.dataset_rejects`` with a reason; the rest is ``gold.dataset``, one row per image. Reasons, first failing
check wins:

- ``synthetic_text_rejected``: the generate stage rejected its text (detail: that stage's reason and detail);
- ``no_synthetic_text``: no synthetic text under this key was ever generated;
- ``no_retrieved_text``: no row in ``silver.retrieval`` for the model;
- ``no_cluster``: no leaf in ``silver.image_clusters`` for the model (e.g. an unusable embedding).

Scales (``balance.scales``) are subsets of gold.dataset, each a boolean column ``scale_<name>``. A scale keeps, in
every leaf cluster, the first ``quota`` members in one seeded order: ``random`` ranks by xxhash64 of the image id
and ``balance.seed``; ``closest`` by cosine to the leaf centroid, highest first (ties: smaller image id). Quotas
come from :mod:`udfs.balance`: ``cap`` (paper: 20 / 35 / 180 for 15M / 30M / 100M), or ``target`` (water-filling
to that many rows, optionally top-down over the tree's levels). Because all scales use one order, a scale with
smaller quotas everywhere is a subset of a larger one. Only cluster sizes (one row per leaf) reach the driver;
members are ranked in a window per leaf and compared with the quota in the same pass.

Scales ``by: entries`` (MetaCLIP) and ``by: concepts`` (inverse concept frequency) balance over what the pairs show
instead: entries of a vocabulary matched in the four texts, or each image's top tags of ``gold.image_tags``
(:mod:`realsyn.concept_sampling`, docs/dataset.md). ``gold.concept_counts`` holds, per such scale and concept, the
pairs before and in the scale.

``raw_image_url``: an image can sit at several URLs in several documents. The row names the URL of its
reference with the smallest (doc_id, position): a pick that does not depend on the order documents arrived in.
``source_refs`` lists every (doc_id, position, url) in that order. URLs are stored without userinfo and without the
query parameters of ``fetch.redact_query_params`` (signatures, tokens: :mod:`udfs.urls`); ``url_redacted`` says
that ``raw_image_url`` lost some.

The gold tables are overwritten in one commit each and the funnel rows of stage ``balance`` replaced, so a rerun
gives the same tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from realsyn.concept_sampling import (
    Cut,
    concept_distributions,
    concept_keys,
    entry_keys,
    entry_matches,
    smallest,
    tag_concepts,
    threshold_cut,
    vocabulary,
    with_unmatched,
)
from realsyn.config import ConfigError
from realsyn.config_sections import BalanceConfig, BalanceScaleConfig, Config
from realsyn.contracts import (
    BRONZE_IMAGE_REFS,
    GOLD_CONCEPT_COUNTS,
    GOLD_DATASET,
    GOLD_DATASET_REJECTS,
    GOLD_IMAGE_TAGS,
    GOLD_SYNTHETIC_TEXT_REJECTS,
    GOLD_SYNTHETIC_TEXTS,
    LEVEL_LEAF,
    RETRIEVED_TEXTS,
    SILVER_IMAGE_CENTROIDS,
    SILVER_IMAGE_CLUSTERS,
    SILVER_IMAGE_EMBEDDINGS,
    SILVER_IMAGES,
    SILVER_RETRIEVAL,
    SILVER_SENTENCES,
    SILVER_TAGS,
    Table,
    scale_column,
)
from realsyn.funnel import REASON, FunnelStep, first_reason, split, write_funnel
from realsyn.tables import Lakehouse
from udfs.balance import capped, hierarchical_quotas, max_over_median, water_fill
from udfs.concepts import head_share
from udfs.urls import SECRET_QUERY_PARAMS, redact_urls

STAGE = "balance"
SYNTHETIC_TEXT_REJECTED = "synthetic_text_rejected"
NO_SYNTHETIC_TEXT = "no_synthetic_text"
NO_RETRIEVED_TEXT = "no_retrieved_text"
NO_CLUSTER = "no_cluster"


@dataclass(frozen=True)
class ScaleSummary:
    """One scale: rows kept, non-empty clusters, and the max / median cluster size before and after sampling;
    for an entries / concepts scale also its concepts, the share of matches in the top 1% of them before and
    after, and the MetaCLIP t that an entries scale's target came to."""

    name: str
    rule: str
    rows: int
    clusters: int
    max_over_median_before: float
    max_over_median_after: float
    concepts: int = 0
    head_share_before: float = 0.0
    head_share_after: float = 0.0
    t: float | None = None

    def __str__(self) -> str:
        plural = "s" * (self.clusters != 1)
        text = (
            f"{self.name} ({self.rule}): {self.rows:,} images in {self.clusters:,} cluster{plural}, "
            f"max/median cluster size {self.max_over_median_before:.2f} -> {self.max_over_median_after:.2f}"
        )
        if self.concepts:
            text += (
                f", top 1% of {self.concepts:,} concepts hold {self.head_share_before:.1%} -> "
                f"{self.head_share_after:.1%} of matches"
            )
        if self.t is not None:
            text += f", t found {self.t:,.3g}"
        return text


@dataclass(frozen=True)
class BalanceSummary:
    """What one balance run wrote."""

    images: int
    kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    scales: tuple[ScaleSummary, ...] = ()

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(self.rejected.items())) or "none"
        scales = "; ".join(str(s) for s in self.scales)
        return (
            f"balance: {self.images:,} images of silver.images -> {self.kept:,} rows in gold.dataset, "
            f"{self.images - self.kept:,} in gold.dataset_rejects ({reasons})"
            + (f"; scales: {scales}" if scales else "; no scales configured")
        )


def _require(lakehouse: Lakehouse, *names: Table) -> None:
    for name in names:
        if not lakehouse.exists(name):
            hint = (
                "run the generate stage (realsyn-generate) first: balance pairs images with the synthetic texts it "
                "writes and makes none itself"
                if name == GOLD_SYNTHETIC_TEXTS
                else "run the stage that writes it first"
            )
            raise RuntimeError(f"{name} does not exist: {hint}")


def _key_filter(cfg: Config) -> Column:
    """The rows of the generate stage's key (GenerateConfig.key: the models and prompt version of its mode)."""
    key = cfg.generate.key(cfg.embed.model)
    return (
        (F.col("model_id") == key.model_id)
        & (F.col("captioner_id") == key.captioner_id)
        & (F.col("llm_id") == key.llm_id)
        & (F.col("prompt_version") == key.prompt_version)
    )


def retrieved_texts(retrieval: DataFrame, sentences: DataFrame, model_id: str) -> DataFrame:
    """One row per image: text1..text3 by rank, and the sentence ids and scores in rank order."""
    ranked = (
        retrieval.filter((F.col("model_id") == model_id) & (F.col("rank") <= RETRIEVED_TEXTS))
        .select("image_id", "rank", "sentence_id", "score")
        .join(sentences.select("sentence_id", "text"), "sentence_id", "left")
    )
    texts = [F.max(F.when(F.col("rank") == r, F.col("text"))).alias(f"text{r}") for r in range(1, RETRIEVED_TEXTS + 1)]
    by_rank = F.array_sort(F.collect_list(F.struct("rank", "sentence_id", "score")))
    return (
        ranked.groupBy("image_id")
        .agg(*texts, by_rank.alias("_ranked"))
        .select(
            "image_id",
            *[f"text{r}" for r in range(1, RETRIEVED_TEXTS + 1)],
            F.col("_ranked.sentence_id").alias("retrieved_sentence_ids"),
            F.col("_ranked.score").alias("retrieval_scores"),
        )
    )


def redacted(url: Column, secret_params: Sequence[str] = SECRET_QUERY_PARAMS) -> Column:
    """Struct (url, url_redacted) of :func:`udfs.urls.redact_url`: ``url`` without userinfo or secret parameters."""
    params = tuple(secret_params)

    @F.pandas_udf("url string, url_redacted boolean")  # type: ignore[call-overload]
    def redact(urls: pd.Series) -> pd.DataFrame:
        return redact_urls(urls, params)

    return redact(url)


def source_references(
    images: DataFrame, refs: DataFrame, secret_params: Sequence[str] = SECRET_QUERY_PARAMS
) -> DataFrame:
    """One row per image: every (doc_id, position, url) that references one of its URLs, sorted, and the first
    URL (``raw_image_url``); URLs without userinfo or secret parameters, ``url_redacted`` when the first lost any."""
    urls = images.select("image_id", F.explode("url_ids").alias("url_id"))
    joined = (
        urls.join(refs.select("url_id", "doc_id", "position", "url"), "url_id")
        .withColumn("_safe", redacted(F.col("url"), secret_params))
        .select("image_id", "doc_id", "position", "_safe.url", "_safe.url_redacted")
    )
    listed = joined.groupBy("image_id").agg(
        F.array_sort(F.collect_set(F.struct("doc_id", "position", "url", "url_redacted"))).alias("_refs")
    )
    return listed.select(
        "image_id",
        F.transform("_refs", lambda r: F.struct(r["doc_id"], r["position"], r["url"])).alias("source_refs"),
        F.col("_refs")[0]["url"].alias("raw_image_url"),
        F.col("_refs")[0]["url_redacted"].alias("url_redacted"),
    )


def leaves_of(clusters: DataFrame, centroids: DataFrame, model_id: str) -> DataFrame:
    """One row per clustered image: leaf_id and the coarse cluster above it (coarse_id)."""
    parents = centroids.filter((F.col("model_id") == model_id) & (F.col("level") == LEVEL_LEAF)).select(
        F.col("centroid_id").alias("leaf_id"), F.col("parent_id").alias("coarse_id")
    )
    return (
        clusters.filter(F.col("model_id") == model_id)
        .select("image_id", "leaf_id")
        .join(F.broadcast(parents), "leaf_id", "left")
    )


def pairs(lakehouse: Lakehouse, cfg: Config) -> DataFrame:
    """silver.images with everything gold.dataset needs and the reject reason of the images it cannot hold."""
    model_id = cfg.embed.model
    images = lakehouse.read(SILVER_IMAGES).select("image_id", "url_ids", "doc_ids", "width", "height", "format")
    syn = (
        lakehouse.read(GOLD_SYNTHETIC_TEXTS)
        .filter(_key_filter(cfg))
        .select("image_id", "syn_text", "cosine", F.lit(True).alias("_has_syn"))
    )
    syn_rejects = (
        lakehouse.read(GOLD_SYNTHETIC_TEXT_REJECTS).filter(_key_filter(cfg))
        if lakehouse.exists(GOLD_SYNTHETIC_TEXT_REJECTS)
        else None
    )
    texts = retrieved_texts(lakehouse.read(SILVER_RETRIEVAL), lakehouse.read(SILVER_SENTENCES), model_id)
    leaves = leaves_of(lakehouse.read(SILVER_IMAGE_CLUSTERS), lakehouse.read(SILVER_IMAGE_CENTROIDS), model_id)
    refs = source_references(images, lakehouse.read(BRONZE_IMAGE_REFS), cfg.fetch.redact_query_params)
    df = (
        images.join(syn, "image_id", "left")
        .join(texts.withColumn("_has_texts", F.lit(True)), "image_id", "left")
        .join(leaves, "image_id", "left")
        .join(refs, "image_id", "left")
    )
    if syn_rejects is not None:
        rejected = syn_rejects.groupBy("image_id").agg(
            F.min(F.concat_ws(": ", F.col(REASON), F.col("detail"))).alias("_syn_reject")
        )
        df = df.join(rejected, "image_id", "left")
    else:
        df = df.withColumn("_syn_reject", F.lit(None).cast("string"))
    has_syn = F.col("_has_syn").isNotNull()
    reason = first_reason(
        [
            (~has_syn & F.col("_syn_reject").isNotNull(), SYNTHETIC_TEXT_REJECTED),
            (~has_syn, NO_SYNTHETIC_TEXT),
            (F.col("_has_texts").isNull(), NO_RETRIEVED_TEXT),
            (F.col("leaf_id").isNull(), NO_CLUSTER),
        ]
    )
    detail = (
        F.when(F.col(REASON) == SYNTHETIC_TEXT_REJECTED, F.col("_syn_reject"))
        .when(F.col(REASON) == NO_SYNTHETIC_TEXT, F.lit(f"no row in {GOLD_SYNTHETIC_TEXTS} under this key"))
        .when(F.col(REASON) == NO_RETRIEVED_TEXT, F.lit(f"no row in {SILVER_RETRIEVAL} for model {model_id}"))
        .when(F.col(REASON) == NO_CLUSTER, F.lit(f"no leaf in {SILVER_IMAGE_CLUSTERS} for model {model_id}"))
    )
    return df.withColumn(REASON, reason).withColumn("detail", detail)


def selection_order(df: DataFrame, lakehouse: Lakehouse, cfg: BalanceConfig, model_id: str) -> DataFrame:
    """``df`` plus ``cluster_rank``: 0-based rank of each image within its leaf in the configured order."""
    if cfg.selection == "random":
        key = F.xxhash64(F.col("image_id"), F.lit(cfg.seed))
        order = [key.asc(), F.col("image_id").asc()]
        ordered = df
    else:
        embeddings = (
            lakehouse.read(SILVER_IMAGE_EMBEDDINGS)
            .filter(F.col("model_id") == model_id)
            .select("image_id", F.col("embedding").alias("_embedding"))
        )
        centroids = (
            lakehouse.read(SILVER_IMAGE_CENTROIDS)
            .filter((F.col("model_id") == model_id) & (F.col("level") == LEVEL_LEAF))
            .select(F.col("centroid_id").alias("leaf_id"), F.col("vector").alias("_centroid"))
        )
        dot = F.aggregate(
            F.zip_with("_embedding", "_centroid", lambda x, y: x.cast("double") * y.cast("double")),
            F.lit(0.0).cast("double"),
            lambda acc, v: acc + v,
        )
        ordered = (
            df.join(embeddings, "image_id", "left")
            .join(centroids, "leaf_id", "left")
            .withColumn("_closeness", dot)
            .drop("_embedding", "_centroid")
        )
        order = [F.col("_closeness").desc_nulls_last(), F.col("image_id").asc()]
    window = Window.partitionBy("leaf_id").orderBy(*order)
    ranked = ordered.withColumn("cluster_rank", (F.row_number().over(window) - 1).cast("int"))
    return ranked.drop("_closeness") if "_closeness" in ranked.columns else ranked


def scale_quotas(parents: np.ndarray, sizes: np.ndarray, cfg: BalanceConfig) -> dict[str, np.ndarray]:
    """Quota per leaf of every cluster scale (``by: clusters``), from each leaf's size and coarse id (``parents``)."""
    out: dict[str, np.ndarray] = {}
    for name, scale in cfg.scales.items():
        if scale.by != "clusters":
            continue
        if scale.cap is not None:
            out[name] = capped(sizes, scale.cap)
        elif scale.hierarchical:
            # Coarse ids may be sparse; map them to 0..k-1 for the kernel.
            _, dense = np.unique(parents, return_inverse=True)
            out[name] = hierarchical_quotas(sizes, [dense], int(scale.target or 0), cfg.seed)
        else:
            out[name] = water_fill(sizes, int(scale.target or 0), cfg.seed)
    return out


def with_scales(ranked: DataFrame, leaf_ids: list[int], quotas: dict[str, np.ndarray]) -> DataFrame:
    """``ranked`` (with ``leaf_id``, ``cluster_rank``) plus one boolean ``scale_<name>`` per quota: rank < quota.

    The quotas travel as a broadcast table of one row per leaf (``leaf_ids`` order); members never leave the tasks.
    """
    if not quotas:
        return ranked
    schema = T.StructType(
        [T.StructField("leaf_id", T.LongType(), False)]
        + [T.StructField(f"_q_{name}", T.LongType(), False) for name in quotas]
    )
    rows = [(int(leaf), *[int(q[i]) for q in quotas.values()]) for i, leaf in enumerate(leaf_ids)]
    quota_df = ranked.sparkSession.createDataFrame(rows, schema)
    out = ranked.join(F.broadcast(quota_df), "leaf_id", "left")
    for name in quotas:
        member = F.coalesce(F.col("cluster_rank") < F.col(f"_q_{name}"), F.lit(False))
        out = out.withColumn(scale_column(name), member).drop(f"_q_{name}")
    return out


def _rule(name: str, cfg: BalanceConfig) -> str:
    s = cfg.scales[name]
    size = f"target {s.target:,}" if s.target is not None else f"t {s.t:g}" if s.t is not None else f"cap {s.cap}"
    if s.by == "entries":
        return f"entries of {s.vocabulary}, {size}, unmatched {s.unmatched}"
    if s.by == "concepts":
        return f"top-{s.top_k} concepts, inverse frequency, {size}, unmatched {s.unmatched}"
    if s.cap is not None:
        return size
    return f"{size}{' top-down' if s.hierarchical else ''}, {cfg.selection}"


# ------------------------------------------------------------------------- scales by entries and concepts


@dataclass(frozen=True)
class ConceptScale:
    """One entries / concepts scale, computed: who is in it, its concepts' counts, the cut that chose them."""

    name: str
    members: DataFrame  # image_id, scale_<name>
    counts: DataFrame  # concept, count_before, count_after
    cut: Cut | None


def _vocabularies(lakehouse: Lakehouse, cfg: Config) -> dict[str, tuple[DataFrame, int]]:
    """The vocabulary of every entries scale, read before any other work: a missing file names its key."""
    out: dict[str, tuple[DataFrame, int]] = {}
    spark = lakehouse.spark
    for name, scale in cfg.balance.scales.items():
        if scale.by != "entries" or scale.vocabulary in out:
            continue
        if scale.vocabulary == "tags":
            if not lakehouse.exists(SILVER_TAGS):
                raise RuntimeError(
                    f"{SILVER_TAGS} does not exist: balance.scales.{name} matches the generate stage's tags; run "
                    "the generate stage first or name a vocabulary file"
                )
            entries = lakehouse.read(SILVER_TAGS).filter(F.col("model_id") == cfg.embed.model).select("tag")
            out["tags"] = vocabulary(entries, "tag")
            continue
        try:
            lines = spark.read.text(scale.vocabulary)
            lines.limit(1).collect()
        except Exception as e:  # AnalysisException: a path that does not exist
            raise ConfigError(
                f"balance.scales.{name}.vocabulary: cannot read {scale.vocabulary}: {str(e).splitlines()[0]}"
            ) from None
        entries = lines.filter(~F.trim("value").startswith("#"))
        out[scale.vocabulary] = vocabulary(entries, "value")
    return out


def concept_scale(
    kept: DataFrame,
    name: str,
    scale: BalanceScaleConfig,
    lakehouse: Lakehouse,
    cfg: Config,
    vocabularies: dict[str, tuple[DataFrame, int]],
) -> ConceptScale:
    """Members and concept counts of one entries / concepts scale over the rows of ``kept``."""
    seed = cfg.balance.seed
    ids = kept.select("image_id", *[f"text{r}" for r in range(1, RETRIEVED_TEXTS + 1)], "syn_text")
    if scale.by == "entries":
        vocab, longest = vocabularies[scale.vocabulary]
        texts = [*[f"text{r}" for r in range(1, RETRIEVED_TEXTS + 1)], "syn_text"]
        matches = entry_matches(ids, texts, vocab, longest)
    else:
        tags = tag_concepts(lakehouse.read(GOLD_IMAGE_TAGS), cfg.embed.model, scale.top_k)
        matches = tags.join(ids.select("image_id"), "image_id")
    matches = with_unmatched(ids, matches, scale.unmatched).localCheckpoint(eager=True)
    keyed = entry_keys(ids, matches, seed) if scale.by == "entries" else concept_keys(ids, matches, seed)
    keys = keyed.localCheckpoint(eager=True)
    cut = threshold_cut(scale.t) if scale.t is not None else smallest(keys, int(scale.target or 0))
    member = cut.member() if cut is not None else F.col("key") < F.lit(float("inf"))
    members = keys.select("image_id", member.alias(scale_column(name)))
    counts = (
        matches.join(members, "image_id")
        .groupBy("concept")
        .agg(
            F.count(F.lit(1)).alias("count_before"),
            F.sum(F.col(scale_column(name)).cast("long")).alias("count_after"),
        )
    )
    return ConceptScale(name, members, counts, cut)


def concept_counts_table(lakehouse: Lakehouse, scales: Sequence[ConceptScale], cfg: BalanceConfig) -> DataFrame:
    """gold.concept_counts rows of every entries / concepts scale, ranked by pairs before sampling (none without)."""
    if not scales:
        return lakehouse.spark.createDataFrame([], GOLD_CONCEPT_COUNTS.schema)
    union = None
    for s in scales:
        rows = s.counts.select(F.lit(s.name).alias("scale"), F.lit(cfg.scales[s.name].by).alias("by"), "*")
        union = rows if union is None else union.unionByName(rows)
    assert union is not None
    rank = F.row_number().over(Window.partitionBy("scale").orderBy(F.col("count_before").desc(), "concept"))
    return union.withColumn("rank", rank.cast("int")).select(*GOLD_CONCEPT_COUNTS.columns)


def run_balance(lakehouse: Lakehouse, cfg: Config) -> BalanceSummary:
    """Write gold.dataset (kept pairs with their scales), gold.dataset_rejects, gold.concept_counts and the balance
    funnel rows."""
    bcfg = cfg.balance
    by_concepts = [n for n, s in bcfg.scales.items() if s.by == "concepts"]
    _require(
        lakehouse,
        SILVER_IMAGES,
        BRONZE_IMAGE_REFS,
        SILVER_RETRIEVAL,
        SILVER_SENTENCES,
        SILVER_IMAGE_CLUSTERS,
        SILVER_IMAGE_CENTROIDS,
        GOLD_SYNTHETIC_TEXTS,
        *([GOLD_IMAGE_TAGS] if by_concepts else []),
    )
    vocabularies = _vocabularies(lakehouse, cfg)
    model_id = cfg.embed.model
    every = pairs(lakehouse, cfg).localCheckpoint(eager=True)
    kept, rejected = split(every)
    key_cols = [F.lit(value).alias(column) for column, value in cfg.generate.key(model_id).columns().items()]
    rejects = rejected.select("image_id", REASON, "detail", *key_cols, "doc_ids")
    counts = {r[REASON]: int(r["count"]) for r in rejected.groupBy(REASON).count().collect()}
    n_images = every.count()

    sizes_rows = kept.groupBy("leaf_id", "coarse_id").count().orderBy("leaf_id").collect()
    leaf_ids = [int(r["leaf_id"]) for r in sizes_rows]
    parents = np.array([-1 if r["coarse_id"] is None else r["coarse_id"] for r in sizes_rows], np.int64)
    sizes = np.array([r["count"] for r in sizes_rows], np.int64)
    quotas = scale_quotas(parents, sizes, bcfg)

    ranked = with_scales(selection_order(kept, lakehouse, bcfg, model_id), leaf_ids, quotas)
    by_meaning = [
        concept_scale(kept, name, scale, lakehouse, cfg, vocabularies)
        for name, scale in bcfg.scales.items()
        if scale.by != "clusters"
    ]
    for s in by_meaning:
        column = scale_column(s.name)
        ranked = ranked.join(s.members, "image_id", "left").withColumn(column, F.coalesce(column, F.lit(False)))
    dataset = ranked.select(
        "image_id",
        "raw_image_url",
        F.coalesce("url_redacted", F.lit(False)).alias("url_redacted"),
        *[f"text{r}" for r in range(1, RETRIEVED_TEXTS + 1)],
        "syn_text",
        "coarse_id",
        "leaf_id",
        "cluster_rank",
        *[scale_column(n) for n in bcfg.scales],
        F.col("cosine").cast("float").alias("syn_cosine"),
        "retrieved_sentence_ids",
        "retrieval_scores",
        "doc_ids",
        "source_refs",
        "width",
        "height",
        "format",
        *key_cols,
    )
    lakehouse.overwrite(GOLD_DATASET, dataset)
    lakehouse.overwrite(GOLD_DATASET_REJECTS, rejects.select(*GOLD_DATASET_REJECTS.columns))
    lakehouse.overwrite(GOLD_CONCEPT_COUNTS, concept_counts_table(lakehouse, by_meaning, bcfg))

    n_kept = int(sizes.sum())
    steps = _funnel_steps(n_images, counts, n_kept)
    scales = []
    if bcfg.scales:
        # Measured on the written tables: members of every scale per leaf, and per concept.
        per_leaf = (
            lakehouse.read(GOLD_DATASET)
            .groupBy("leaf_id")
            .agg(*[F.sum(F.col(scale_column(n)).cast("long")).alias(n) for n in bcfg.scales])
            .collect()
        )
        concepts = concept_distributions(lakehouse) if by_meaning else {}
        cuts = {s.name: s.cut for s in by_meaning}
        for name in bcfg.scales:
            members = np.array([int(r[name]) for r in per_leaf], np.int64)
            rows = int(members.sum())
            steps.append(FunnelStep(f"scale[{name}]", n_kept, rows))
            summary = ScaleSummary(
                name,
                _rule(name, bcfg),
                rows,
                int((members > 0).sum()),
                max_over_median(sizes),
                max_over_median(members),
            )
            if name in concepts:
                _, before, after = concepts[name]
                scale = bcfg.scales[name]
                cut = cuts[name]
                # MetaCLIP's t that a target comes to (a given t is in the rule already).
                t = cut.key if scale.t is None and cut is not None and scale.by == "entries" else None
                summary = replace(
                    summary,
                    concepts=int((before > 0).sum()),
                    head_share_before=head_share(before),
                    head_share_after=head_share(after),
                    t=t,
                )
            scales.append(summary)
    write_funnel(lakehouse, STAGE, steps)
    return BalanceSummary(n_images, n_kept, counts, tuple(scales))


def _funnel_steps(n_images: int, counts: dict[str, int], n_kept: int) -> list[FunnelStep]:
    """Rows in and kept per check, in the order the checks run (first failing check wins)."""
    steps = []
    left = n_images
    for step, reasons in (
        ("synthetic_text", (SYNTHETIC_TEXT_REJECTED, NO_SYNTHETIC_TEXT)),
        ("retrieved_text", (NO_RETRIEVED_TEXT,)),
        ("cluster_images", (NO_CLUSTER,)),
    ):
        out = left - sum(counts.get(r, 0) for r in reasons)
        steps.append(FunnelStep(step, left, out))
        left = out
    if left != n_kept:
        raise RuntimeError(f"balance funnel does not reconcile: {left} images left after the checks, {n_kept} kept")
    return steps
