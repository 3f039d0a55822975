"""The bad-input corpus: malformed documents, texts, file names, URLs, HTTP replies and image bytes, one of each
kind, with the outcome each must have. Written on demand (``python tests/data/bad_inputs/make_bad_inputs.py OUT
BASE_URL``, or :func:`write_corpus` from a test) because the image URLs name the port of the test's HTTP server.

Layout under ``out``: ``images/`` (the files the HTTP server serves, also read as ``file://`` URIs),
``mmc4/`` (``docs.jsonl``, a good and a truncated ``.jsonl.gz``, files whose names Spark would read as globs or
Hadoop as a URI, a link back up the tree and a link to nothing), ``obelics/`` (parquet shards, one with such a name,
and a file that is not parquet). :data:`KINDS` names every kind of bad input and where it must end: the first
corpus's kinds, then :data:`SECOND_KINDS`, a second corpus written apart from the first, as a hostile user would.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from skimage import data
from sklearn.datasets import load_sample_image

# kind of bad input -> where it must end (table, reason or status). Checked by tests/jobs/test_bad_inputs.py.
KINDS = {
    "truncated .jsonl.gz": "bronze.ingest_rejects file/unreadable_file, the other files ingested",
    "non-parquet file in a parquet folder": "bronze.ingest_rejects file/unreadable_file",
    "broken JSON line (twice, byte-identical)": "two document/malformed_json rejects",
    "invalid UTF-8": "document/invalid_utf8",
    "JSON null": "document/null_document",
    "JSON array instead of an object": "document/not_a_json_object",
    "empty object": "document/empty_document",
    "text_list of the wrong type": "document/schema_mismatch",
    "the same document twice": "document/duplicate_document",
    "OBELICS lists of unequal length": "document/unequal_list_lengths",
    "OBELICS position with text and image": "document/position_with_text_and_image",
    "UTF-8 byte-order mark": "kept",
    "document without images": "kept",
    "document without texts": "kept",
    "numbers and objects in text_list": "text/non_string_text",
    "NUL character in a text": "text/nul_in_text",
    "huge text (150,000 chars)": "text/text_too_large",
    "null text": "text/null_text",
    "string matched_text_index": "field/invalid_matched_text_index (image kept)",
    "NaN matched_sim": "field/invalid_matched_sim (image kept)",
    "matched_text_index out of range": "image/matched_text_index_out_of_range",
    "empty image URL": "image/missing_url",
    "emoji-only text": "silver.sentence_rejects emoji",
    "right-to-left text": "kept through ingest, judged by the sentence filters",
    "private address": "fetch blocked",
    "loopback host name": "fetch blocked",
    "link-local metadata address": "fetch blocked",
    "redirect to 127.0.0.1": "fetch blocked",
    "redirect to 169.254.169.254": "fetch blocked",
    "redirect chain to loopback": "fetch blocked",
    "javascript: URL": "fetch blocked",
    "file: outside the allowed roots": "fetch blocked",
    "not a URL": "fetch invalid_url",
    "unparseable URL": "fetch invalid_url",
    "truncated JPEG": "fetch decode_error",
    "zero-byte image file": "fetch not_an_image",
    "SVG": "fetch not_an_image",
    "HTML served as image/jpeg": "fetch not_an_image",
    "decompression bomb (PNG header 100,000 x 100,000)": "fetch too_many_pixels",
    "huge decoded PNG (9,000 x 9,000)": "fetch too_many_pixels",
    "password and signed-URL tokens in an image URL": "fetched ok with Basic auth; no table or export after the "
    "fetch holds any of SECRETS (gold.dataset.url_redacted true)",
}
SECOND_KINDS = {
    "two JSON objects on one line": "document/malformed_json (neither ingested)",
    "a JSON object and trailing garbage on its line": "document/malformed_json",
    "single-quoted pseudo-JSON": "document/malformed_json",
    "MMC4 url that is a JSON object": "document/schema_mismatch",
    "OBELICS url that is a JSON object": "document/schema_mismatch",
    "20 MB data: URI as an image URL": "ingested whole; fetch not_an_image (its bytes decode to zeros)",
    "matched_text_index of 2^40": "field/invalid_matched_text_index (image kept)",
    "text of white space only (tab, newline, NBSP, em and ideographic spaces)": "text/blank_text",
    "text of zero-width characters only": "text/blank_text",
    "file name with {}": "read",
    "file name with []": "read",
    "file name with :": "read",
    "file name with *": "read",
    "parquet file name with {} : []": "read",
    "symbolic link back up the input folder (a loop)": "every file read once",
    "symbolic link to nothing": "file/unreadable_file",
    "JPEG with EXIF orientation 6": "silver.images as displayed: 427x640, stored 640x427",
    "the same picture as JPEG q95 and as PNG": "one image kept, the other perceptual_dedup/near_duplicate",
    "the same bytes at three URLs": "one image kept, two exact_dedup/exact_duplicate rejects, each with its own key",
    "reply longer than its Content-Length": "fetch malformed_response",
    "reply shorter than its Content-Length": "fetch connection_error",
    "invalid punycode host (xn--)": "fetch invalid_url, no DNS lookup",
}

# Planted in one image URL (userinfo password, an S3 signature, a token): nothing after the fetch may hold them.
SECRETS = ("pw-5ecret", "s1gnature-5ecret", "t0ken-5ecret")
BASIC_AUTH = ("user", SECRETS[0])

CAPTIONS = [
    "A brown dog is running across the green field.",
    "The astronaut stands next to a large white rocket.",
    "A woman is drinking hot coffee in a small cafe.",
    "A gray cat sleeps on the warm windowsill.",
    "Two children are playing with a red ball in the park.",
    "An old man rides a bicycle along the river.",
]
RTL = "مرحبا بكم في المدينة القديمة الجميلة جدا"
EMOJI = "😀😀😀 🎉🎉"


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def image_files() -> dict[str, bytes]:
    """Name -> bytes of every file the server serves (good photographs and bad bytes)."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    photo = {n: Image.fromarray(getattr(data, n)()).convert("RGB") for n in names}
    good = _encode(photo["astronaut"], "JPEG")
    return {
        "astronaut.jpg": good,
        "coffee.jpg": _encode(photo["coffee"], "JPEG"),
        "chelsea.png": _encode(photo["chelsea"], "PNG"),
        "private/rocket.jpg": _encode(photo["rocket"], "JPEG"),  # served only with BASIC_AUTH
        "truncated.jpg": good[: len(good) // 2],
        "zero.jpg": b"",
        "image.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200"><rect width="200"/></svg>',
        "page.jpg": b"<!doctype html><html><body>not an image</body></html>",
        "bomb.png": _bomb_png(100_000, 100_000),
        "huge.png": _encode(Image.new("RGB", (9000, 9000), (30, 60, 90)), "PNG"),
        **second_image_files(),
    }


def second_image_files() -> dict[str, bytes]:
    """The second corpus's images: EXIF-turned, one picture in two formats, one file served at three URLs."""
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display
    flower = Image.fromarray(load_sample_image("flower.jpg"))
    return {
        "turned.jpg": _encode(Image.fromarray(load_sample_image("china.jpg")), "JPEG", exif=exif),
        "flower.jpg": _encode(flower, "JPEG", quality=95),
        "flower.png": _encode(flower, "PNG"),
        "hubble.jpg": _encode(Image.fromarray(data.hubble_deep_field()), "JPEG"),
    }


def raw_replies() -> dict[str, bytes]:
    """Path -> the bytes of a reply whose body is longer or shorter than its Content-Length (the server writes them
    as they are, then closes the connection)."""
    body = _encode(Image.fromarray(data.coffee()), "JPEG")

    def reply(length: int) -> bytes:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        return head.encode() + body

    return {"/raw/longer": reply(len(body) - 100), "/raw/shorter": reply(len(body) + 100)}


DATA_URI = "data:image/png;base64," + "A" * 20_000_000  # over Jackson's default limit of 20,000,000 characters


def hostile_urls(base: str, images: Path) -> dict[str, str]:
    """URL -> the fetch status it must end in (``base`` is the test server, ``images`` the allowed file root)."""
    port = base.rsplit(":", 1)[1]
    user, password = BASIC_AUTH
    signed = f"{base.replace('://', f'://{user}:{password}@')}/private/rocket.jpg"
    signed += f"?X-Amz-Signature={SECRETS[1]}&w=640&token={SECRETS[2]}"
    return {
        signed: "ok",
        f"{base}/astronaut.jpg": "ok",
        f"{base}/coffee.jpg": "ok",
        (images / "chelsea.png").as_uri(): "ok",
        f"{base}/truncated.jpg": "decode_error",
        (images / "zero.jpg").as_uri(): "not_an_image",
        f"{base}/image.svg": "not_an_image",
        f"{base}/page.jpg": "not_an_image",
        f"{base}/bomb.png": "too_many_pixels",
        f"{base}/huge.png": "too_many_pixels",
        "http://10.0.0.1/a.jpg": "blocked",
        f"http://localhost:{port}/astronaut.jpg": "blocked",
        "http://169.254.169.254/latest/meta-data/": "blocked",
        f"{base}/redirect-loopback": "blocked",
        f"{base}/redirect-metadata": "blocked",
        f"{base}/chain-1": "blocked",
        "javascript:alert(1)": "blocked",
        "file:///etc/passwd": "blocked",
        "not a url at all": "invalid_url",
        "http://[::1/x": "invalid_url",
        # The second corpus.
        f"{base}/turned.jpg": "ok",
        f"{base}/flower.jpg": "ok",
        f"{base}/flower.png": "ok",
        **{f"{base}/hubble.jpg{query}": "ok" for query in ("", "?copy=2", "?copy=3")},
        f"{base}/raw/longer": "malformed_response",
        f"{base}/raw/shorter": "connection_error",
        "http://xn--/a.jpg": "invalid_url",
        DATA_URI: "not_an_image",
    }


def _mmc4(url: str, texts: object, images: list[dict[str, object]] | None = None) -> bytes:
    return json.dumps({"url": url, "text_list": texts, "image_info": images or []}).encode()


def write_corpus(out: Path, base: str) -> dict[str, str]:
    """Write the corpus under ``out`` for the server at ``base``; return :func:`hostile_urls`."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name, payload in image_files().items():
        (images / name).parent.mkdir(exist_ok=True)
        (images / name).write_bytes(payload)
    urls = hostile_urls(base, images)
    good_a = _mmc4(
        "https://ok.example/a",
        CAPTIONS[:2],
        [{"raw_url": f"{base}/astronaut.jpg", "matched_text_index": 1, "matched_sim": 0.31}],
    )
    hostile = [{"raw_url": u, "matched_text_index": 0} for u in urls if u != f"{base}/astronaut.jpg"]
    lines = [
        good_a,
        _mmc4("https://ok.example/b", [CAPTIONS[2], RTL, EMOJI], hostile),
        b'{"url": "https://bad.example/1", "text_list": ["unterminated',
        b'{"url": "https://bad.example/1", "text_list": ["unterminated',
        b'{"url": "https://bad.example/2", "text_list": ["caf\xe9 in latin-1"]}',
        b"null",
        b"[1, 2]",
        b"{}",
        b'{"url": "https://bad.example/3", "text_list": "not a list"}',
        good_a,  # the same document again
        b"\xef\xbb\xbf" + _mmc4("https://ok.example/bom-no-images", [CAPTIONS[3]]),
        _mmc4("https://ok.example/no-texts", [], [{"raw_url": f"{base}/coffee.jpg"}]),
        _mmc4("https://ok.example/types", [CAPTIONS[4], 2.5, {"a": 1}, "Nul\u0000inside the text.", None]),
        _mmc4(
            "https://ok.example/fields",
            [CAPTIONS[5], "x" * 150_000],
            [
                {"raw_url": f"{base}/astronaut.jpg", "matched_text_index": "one"},
                {"raw_url": f"{base}/coffee.jpg", "matched_text_index": 0, "matched_sim": float("nan")},
                {"raw_url": f"{base}/coffee.jpg", "matched_text_index": 7},
                {"raw_url": "", "matched_text_index": 0},
            ],
        ),
    ]
    lines += _second_lines(base)
    mmc4 = out / "mmc4"
    mmc4.mkdir(exist_ok=True)
    (mmc4 / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    for name in ODD_NAMES:
        (mmc4 / f"{name}.jsonl").write_bytes(_mmc4(f"https://ok.example/{name}", [f"Read from the file {name}."]))
    (mmc4 / "sub").mkdir(exist_ok=True)
    (mmc4 / "sub" / "loop").symlink_to("..")
    (mmc4 / "gone.jsonl").symlink_to("nowhere.jsonl")
    (mmc4 / "good.jsonl.gz").write_bytes(gzip.compress(_mmc4("https://ok.example/gz", [CAPTIONS[0] + " Again."])))
    whole = gzip.compress(b"\n".join(_mmc4(f"https://lost.example/{i}", [f"Lost {i}."]) for i in range(300)))
    (mmc4 / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    obelics = out / "obelics"
    obelics.mkdir(exist_ok=True)

    def ob(url: str, texts: list[str | None], imgs: list[str | None]) -> dict[str, object]:
        meta = json.dumps([None if i is None else {"src": i} for i in imgs])
        return {"images": imgs, "texts": texts, "metadata": meta, "general_metadata": json.dumps({"url": url})}

    rows = [
        ob("https://ob.example/good", [CAPTIONS[1], None], [None, (images / "chelsea.png").as_uri()]),
        ob("https://ob.example/unequal", ["A caption.", None], [None]),
        ob("https://ob.example/both", ["A caption."], [f"{base}/coffee.jpg"]),
    ]
    pq.write_table(pa.Table.from_pylist(rows), obelics / "docs.parquet")
    odd = ob("https://ob.example/odd-name", [CAPTIONS[2], None], [None, f"{base}/coffee.jpg"])
    url_object = {**ob("", ["A caption."], [None]), "general_metadata": json.dumps({"url": {"a": 1}})}
    pq.write_table(pa.Table.from_pylist([odd, url_object]), obelics / "{p}:[q].parquet")
    (obelics / "notes.parquet").write_text("this file is not parquet\n")
    return urls


ODD_NAMES = ("{a}", "[b]", "c:d", "x*")  # Spark reads {} [] * as globs; Hadoop's checksum layer chokes on ":"


def _second_lines(base: str) -> list[bytes]:
    """The second corpus's lines of ``mmc4/docs.jsonl``."""
    return [
        _mmc4("https://bad.example/two-1", ["One."]) + b" " + _mmc4("https://bad.example/two-2", ["Two."]),
        _mmc4("https://bad.example/trailing", ["Trailing garbage."]) + b" x",
        b"{'url': 'https://bad.example/quotes', 'text_list': ['Single quotes.']}",
        b'{"url": {"a": 1}, "text_list": ["An object as URL."], "image_info": []}',
        _mmc4(
            "https://ok.example/second-fields",
            [CAPTIONS[3], " \t\n\u00a0\u2003\u3000", "\u200b\u200c\u200d\u2060\ufeff"],
            [{"raw_url": f"{base}/coffee.jpg", "matched_text_index": 2**40}],
        ),
    ]


if __name__ == "__main__":
    for url, status in write_corpus(Path(sys.argv[1]), sys.argv[2]).items():
        print(f"{status:16} {url}")
