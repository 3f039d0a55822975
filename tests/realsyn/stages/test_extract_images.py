"""Image extraction stage on known inputs built from real photographs (scikit-image, scikit-learn)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from PIL import ImageEnhance
from pyspark.sql import DataFrame, SparkSession

from realsyn.config_sections import Config, ExtractImagesConfig
from realsyn.contracts import (
    BRONZE_FETCHED_IMAGES,
    BRONZE_IMAGE_REFS,
    FUNNEL,
    REASON,
    SILVER_IMAGE_REJECTS,
    SILVER_IMAGES,
)
from realsyn.ids import bytes_id, stable_id
from realsyn.stages.extract_images import extract_images, run_extract_images, url_rows
from realsyn.tables import Lakehouse
from tests.support.photos import crop, encode, photo
from tests.support.plans import above_the_bytes, physical_plan
from tests.support.tables import rows_frame
from udfs.images import hamming, image_info, phash


def _inputs() -> dict[str, bytes]:
    """URL name -> image bytes: originals, edited copies, exact copies, and images that must be filtered."""
    ast, cof, che, roc, chi, flo = (photo(n) for n in ["astronaut", "coffee", "chelsea", "rocket", "china", "flower"])
    rocket = encode(roc, "JPEG", quality=85)
    coffee_jpeg = encode(cof, "JPEG", quality=90)
    return {
        "astronaut": encode(ast),  # 512 x 512
        "astronaut-small-jpeg": encode(ast.resize((256, 256)), "JPEG", quality=40),
        "coffee": encode(cof),  # 600 x 400
        "coffee-crop-recolour": encode(ImageEnhance.Color(crop(cof, 0.02)).enhance(0.85)),  # 576 x 384
        "chelsea": encode(che.resize((300, 200))),
        "chelsea-bright": encode(ImageEnhance.Brightness(che).enhance(1.1), "JPEG", quality=70),  # 451 x 300
        "rocket-1": rocket,
        "rocket-2": rocket,
        "rocket-3": rocket,
        "china": encode(chi, "JPEG", quality=90),
        "flower": encode(flo, "JPEG", quality=90),
        "tiny-astronaut": encode(ast.resize((90, 90))),
        "flower-strip": encode(flo.crop((0, 0, 640, 150))),  # 640 / 150 > 3
        "html": b"<html>404</html>",
        "coffee-truncated": coffee_jpeg[: len(coffee_jpeg) // 2],
    }


FETCHED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _write_bronze(spark: SparkSession, lakehouse: Lakehouse, contents: dict[str, bytes]) -> dict[str, str]:
    url_ids = {name: stable_id(f"https://example.org/{name}") for name in contents}
    # Fetched in descending url_id order: which copy of some bytes arrived first must not decide which one stands.
    at = {n: FETCHED_AT + timedelta(seconds=i) for i, n in enumerate(sorted(contents, key=url_ids.get, reverse=True))}
    fetched = [(url_ids[n], f"https://example.org/{n}", "ok", at[n], bytes_id(c), c) for n, c in contents.items()]
    fetched.append(
        (stable_id("https://example.org/gone"), "https://example.org/gone", "http_error", FETCHED_AT, None, None)
    )
    columns = ("url_id", "url", "status", "fetched_at", "image_id", "content")
    rows = [dict(zip(columns, row, strict=True)) for row in fetched]
    lakehouse.overwrite(BRONZE_FETCHED_IMAGES, rows_frame(spark, BRONZE_FETCHED_IMAGES, rows))
    # Document i uses the i-th URL; d-all uses every rocket copy and the astronaut.
    refs = [(f"d{i:02d}", 0, f"https://example.org/{n}", url_ids[n]) for i, n in enumerate(contents)]
    refs += [
        ("d-all", j, f"https://example.org/{n}", url_ids[n])
        for j, n in enumerate([n for n in ["rocket-2", "rocket-3", "astronaut"] if n in contents])
    ]
    ref_rows = [dict(zip(("doc_id", "position", "url", "url_id"), ref, strict=True)) for ref in refs]
    lakehouse.overwrite(BRONZE_IMAGE_REFS, rows_frame(spark, BRONZE_IMAGE_REFS, ref_rows))
    return url_ids


def test_extract_images_end_to_end(spark: SparkSession, lakehouse: Lakehouse) -> None:
    contents = _inputs()
    names = list(contents)
    url_ids = _write_bronze(spark, lakehouse, contents)
    doc = {n: f"d{i:02d}" for i, n in enumerate(names)}
    cfg = Config(storage=lakehouse.storage)

    summary = run_extract_images(lakehouse, cfg)

    def urls(*ns: str) -> list[str]:
        return sorted(url_ids[n] for n in ns)

    expected_images = {
        # representative (largest resolution) -> (size, url names of the group, documents)
        "astronaut": (
            (512, 512, "png"),
            ["astronaut", "astronaut-small-jpeg"],
            [doc["astronaut"], doc["astronaut-small-jpeg"], "d-all"],
        ),
        "coffee": ((600, 400, "png"), ["coffee", "coffee-crop-recolour"], [doc["coffee"], doc["coffee-crop-recolour"]]),
        "chelsea-bright": ((451, 300, "jpeg"), ["chelsea", "chelsea-bright"], [doc["chelsea"], doc["chelsea-bright"]]),
        "rocket-1": (
            (640, 427, "jpeg"),
            ["rocket-1", "rocket-2", "rocket-3"],
            [doc["rocket-1"], doc["rocket-2"], doc["rocket-3"], "d-all"],
        ),
        "china": ((640, 427, "jpeg"), ["china"], [doc["china"]]),
        "flower": ((640, 427, "jpeg"), ["flower"], [doc["flower"]]),
    }
    got = {
        r["image_id"]: (r["width"], r["height"], r["format"], r["url_ids"], r["doc_ids"], bytes(r["content"]))
        for r in lakehouse.read(SILVER_IMAGES).collect()
    }
    assert got == {
        bytes_id(contents[rep]): (*size, urls(*group), sorted(docs), contents[rep])
        for rep, (size, group, docs) in expected_images.items()
    }

    rejects = sorted(
        (r["step"], r["reason"], r["image_id"], tuple(r["url_ids"]), r["duplicate_of"])
        for r in lakehouse.read(SILVER_IMAGE_REJECTS).collect()
    )
    rid = {n: bytes_id(c) for n, c in contents.items()}
    # What the quality check measured, against the default limits (short side 100, aspect ratio 3).
    details = {r["image_id"]: r["detail"] for r in lakehouse.read(SILVER_IMAGE_REJECTS).collect()}
    assert details.pop(rid["tiny-astronaut"]) == "90x90: short side 90 < 100"
    assert details.pop(rid["flower-strip"]) == "640x150: aspect ratio 4.27 > 3"
    assert set(details.values()) == {None}
    assert rejects == sorted(
        [
            ("quality", "too_small", rid["tiny-astronaut"], (url_ids["tiny-astronaut"],), None),
            ("quality", "aspect_ratio", rid["flower-strip"], (url_ids["flower-strip"],), None),
            ("quality", "undecodable", rid["html"], (url_ids["html"],), None),
            # The copies with the larger url_ids are the rejected rows, though fetched first; all URLs live on in
            # the kept image.
            *[
                ("exact_dedup", "exact_duplicate", rid["rocket-1"], (u,), rid["rocket-1"])
                for u in urls("rocket-1", "rocket-2", "rocket-3")[1:]
            ],
            ("perceptual_dedup", "undecodable", rid["coffee-truncated"], (url_ids["coffee-truncated"],), None),
            (
                "perceptual_dedup",
                "near_duplicate",
                rid["astronaut-small-jpeg"],
                (url_ids["astronaut-small-jpeg"],),
                rid["astronaut"],
            ),
            (
                "perceptual_dedup",
                "near_duplicate",
                rid["coffee-crop-recolour"],
                (url_ids["coffee-crop-recolour"],),
                rid["coffee"],
            ),
            ("perceptual_dedup", "near_duplicate", rid["chelsea"], (url_ids["chelsea"],), rid["chelsea-bright"]),
        ]
    )

    funnel = [
        (r["step"], r["rows_in"], r["rows_out"], r["rows_rejected"])
        for r in lakehouse.read(FUNNEL).where("stage = 'extract_images'").orderBy("step_index").collect()
    ]
    assert funnel == [("quality", 15, 12, 3), ("exact_dedup", 12, 10, 2), ("perceptual_dedup", 10, 6, 4)]
    assert summary.kept == 6

    # Every reject has its own key: the URL's for a URL dropped at quality or exact dedup (the same bytes at three
    # URLs are two rejects), the image's for an image dropped later.
    keys = {
        r["reject_id"]: (r["step"], r["url_ids"], r["image_id"]) for r in lakehouse.read(SILVER_IMAGE_REJECTS).collect()
    }
    assert len(keys) == len(rejects)
    assert all(
        key == (url_ids_[0] if step in ("quality", "exact_dedup") else image_id)
        for key, (step, url_ids_, image_id) in keys.items()
    )

    # A rerun replaces the tables with identical content.
    before_images = lakehouse.read(SILVER_IMAGES).collect()
    before_rejects = lakehouse.read(SILVER_IMAGE_REJECTS).collect()
    run_extract_images(lakehouse, cfg)
    assert sorted(lakehouse.read(SILVER_IMAGES).collect()) == sorted(before_images)
    assert sorted(lakehouse.read(SILVER_IMAGE_REJECTS).collect()) == sorted(before_rejects)

    # A URL fetched later with the same bytes joins the image as one more reject, whatever its url_id: the URL
    # that stood for the image before still does.
    late = next(
        u
        for i in range(1000)
        if (u := f"https://mirror.example/rocket-{i}") and stable_id(u) < min(urls("rocket-1", "rocket-2", "rocket-3"))
    )
    late_row = {"url_id": stable_id(late), "url": late, "status": "ok", "fetched_at": FETCHED_AT + timedelta(days=1)}
    late_row |= {"image_id": rid["rocket-1"], "content": contents["rocket-1"]}
    lakehouse.insert_new(BRONZE_FETCHED_IMAGES, rows_frame(spark, BRONZE_FETCHED_IMAGES, [late_row]))
    run_extract_images(lakehouse, cfg)
    exact = {r["reject_id"] for r in lakehouse.read(SILVER_IMAGE_REJECTS).where("step = 'exact_dedup'").collect()}
    assert exact == {*urls("rocket-1", "rocket-2", "rocket-3")[1:], stable_id(late)}


def _join_with_the_bytes(frame: DataFrame) -> list[str]:
    """The operators between the bytes' scan and the first join above it, and that join."""
    chain = above_the_bytes(physical_plan(frame))
    return chain[: next(i for i, op in enumerate(chain) if op.endswith("Join")) + 1]


def test_the_bytes_meet_the_kept_images_in_a_broadcast_join_not_a_shuffle(
    spark: SparkSession, lakehouse: Lakehouse
) -> None:
    _write_bronze(spark, lakehouse, _inputs())
    fetched, refs = lakehouse.read(BRONZE_FETCHED_IMAGES), lakehouse.read(BRONZE_IMAGE_REFS)
    with extract_images(fetched, refs, ExtractImagesConfig()) as (images, rejects, _):
        # The bytes are read, filtered and joined to the broadcast metadata of the kept images where they lie.
        path = _join_with_the_bytes(images)
        assert path[-1] == "BroadcastHashJoin" and not any("Exchange" in op for op in path), path
        assert "FileScan" not in physical_plan(rejects)
        assert images.count() == 6
    # Under a threshold that rules out broadcasting, the same rows come through a shuffle of the bytes.
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        with extract_images(fetched, refs, ExtractImagesConfig()) as (images, _, _):
            path = _join_with_the_bytes(images)
            assert path[-1] == "SortMergeJoin" and "Exchange" in path, path
            assert images.count() == 6
    finally:
        spark.conf.unset("spark.sql.autoBroadcastJoinThreshold")


def test_a_url_with_the_fetch_stages_header_is_not_read_again(spark: SparkSession) -> None:
    """The fetch stage stores the id, size and format of every image it fetched: url_rows takes them and reads the
    bytes only of rows without them (another tool's table, an earlier version's rows)."""
    chelsea = encode(photo("chelsea").resize((300, 200)))
    stored = {"image_id": bytes_id(chelsea), "width": 300, "height": 200, "format": "png"}
    rows = [
        # As the fetch stage writes it; the bytes here are no image, so a header read would give no size at all.
        {"url_id": "stored", "status": "ok", **stored, "phash": 7, "content": b"<html>not read</html>"},
        {"url_id": "bare", "status": "ok", "content": chelsea},  # no header stored: read from the bytes
        {"url_id": "half", "status": "ok", "image_id": "kept-id", "width": 1, "content": chelsea},
        {"url_id": "failed", "status": "http_error"},
    ]
    fetched = rows_frame(spark, BRONZE_FETCHED_IMAGES, rows)
    refs = rows_frame(spark, BRONZE_IMAGE_REFS, [{"doc_id": "d1", "position": 0, "url": "u", "url_id": "bare"}])
    got = {r["url_id"]: r.asDict() for r in url_rows(fetched, refs).collect()}
    assert got == {
        "stored": {"url_id": "stored", **stored, "phash": 7, "doc_ids": []},
        "bare": {"url_id": "bare", **stored, "phash": None, "doc_ids": ["d1"]},
        # A row missing part of the header is read whole; an id it has is kept (the fetch stage's hash).
        "half": {"url_id": "half", **stored, "image_id": "kept-id", "phash": None, "doc_ids": []},
    }
    # A table written before the fetch stage stored the perceptual hash: the same rows, with no hash.
    older = {r["url_id"]: r.asDict() for r in url_rows(fetched.drop("phash"), refs).collect()}
    assert older == {**got, "stored": {**got["stored"], "phash": None}}


def test_the_fetch_stages_perceptual_hash_is_used_and_only_images_without_one_are_hashed_here(
    spark: SparkSession,
) -> None:
    astronaut, coffee = encode(photo("astronaut")), encode(photo("coffee"))  # 512 x 512, 600 x 400
    chelsea = encode(photo("chelsea").resize((300, 200)))
    assert hamming(phash(astronaut), phash(coffee)) > ExtractImagesConfig().perceptual_dedup.max_distance

    def fetched_row(name: str, content: bytes, stored_hash: int | None) -> dict[str, object]:
        width, height, fmt = image_info(content)
        header = {"image_id": bytes_id(content), "width": width, "height": height, "format": fmt}
        return {"url_id": name, "status": "ok", **header, "phash": stored_hash, "content": content}

    rows = [
        # Stored with the coffee photograph's hash: if the stage reads the stored hash, the two are one picture.
        fetched_row("astronaut", astronaut, phash(coffee)),
        fetched_row("coffee", coffee, None),  # none stored: hashed from its bytes here
        fetched_row("chelsea", chelsea, phash(chelsea)),
    ]
    fetched = rows_frame(spark, BRONZE_FETCHED_IMAGES, rows)
    refs = rows_frame(
        spark,
        BRONZE_IMAGE_REFS,
        [{"doc_id": "d", "position": i, "url": r["url_id"], "url_id": r["url_id"]} for i, r in enumerate(rows)],
    )
    with extract_images(fetched, refs, ExtractImagesConfig()) as (images, rejects, steps):
        kept = {r["image_id"]: r["url_ids"] for r in images.collect()}
        dropped = {(r["image_id"], r[REASON], r["duplicate_of"]) for r in rejects.collect()}
    # The larger picture (astronaut) represents the group and takes over the coffee photograph's URL.
    assert kept == {bytes_id(astronaut): ["astronaut", "coffee"], bytes_id(chelsea): ["chelsea"]}
    assert dropped == {(bytes_id(coffee), "near_duplicate", bytes_id(astronaut))}
    assert [(s.step, s.rows_in, s.rows_out) for s in steps][-1] == ("perceptual_dedup", 3, 2)
