"""What the fetcher takes and what it gives, without its machinery: its options and the schema of its rows.

:class:`FetchOptions` (limits, timeouts, safety settings; their defaults are the ``fetch`` config section's) and
:data:`ARROW_SCHEMA` (one row per URL, the columns of ``bronze.fetched_images``). Kept apart from
:mod:`udfs.fetch` so that the config and the table contracts read them without importing the fetcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from udfs.decode import DEFAULT_MAX_DECODED_BYTES
from udfs.urls import SECRET_QUERY_PARAMS

DEFAULT_SCHEMES = ("http", "https", "data", "file", "s3", "s3a", "gs", "abfs", "abfss", "dbfs")


@dataclass(frozen=True)
class FetchOptions:
    """Limits, timeouts and safety settings of one fetcher (one per Spark task)."""

    concurrency: int = 128
    per_host: int = 16
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    total_timeout_s: float = 30.0
    max_attempts: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_retry_after_s: float = 60.0
    max_redirects: int = 5
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    inline_decode_pixels: int = 4_000_000  # larger images are decoded in one of the decode threads
    user_agent: str = "realsyn/0.1 (image-text dataset builder; honours X-Robots-Tag noai, noimageai)"
    user_agent_token: str = "realsyn"
    opt_out_directives: tuple[str, ...] = ("noai", "noimageai")
    allow_networks: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = DEFAULT_SCHEMES
    file_roots: tuple[str, ...] = ()
    object_prefixes: tuple[str, ...] = ()
    verify_tls: bool = True
    # "strip": fetch with the URL's userinfo (Basic auth to that host), store the URL without it; "refuse": do not
    # fetch such a URL (status credentials_in_url). Stored URLs and errors never hold userinfo or these parameters.
    credentials_in_url: str = "strip"
    redact_query_params: tuple[str, ...] = SECRET_QUERY_PARAMS
    content_prefix: str | None = None
    dns_threads: int = 32
    io_threads: int = 8
    decode_threads: int = 2
    # Store the perceptual hash (udfs.images.phash) of each accepted image that extract_images' quality filter keeps
    # (shorter side >= hash_min_short_side, long / short side <= hash_max_aspect_ratio): that stage groups
    # near-duplicates by it, and hashed here, where the bytes are in hand, it spares the stage a pass over them.
    perceptual_hash: bool = False
    hash_min_short_side: int = 0
    hash_max_aspect_ratio: float = float("inf")


# One row per URL (:class:`udfs.fetch.FetchResult` and its url_id): what :func:`udfs.fetch_arrow.fetch_arrow` yields.
ARROW_SCHEMA = pa.schema(
    [
        ("url_id", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("retryable", pa.bool_()),
        ("http_status", pa.int32()),
        ("error", pa.string()),
        ("attempts", pa.int32()),
        ("elapsed_ms", pa.int64()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
        ("image_id", pa.string()),
        ("content", pa.binary()),
        ("content_path", pa.string()),
        ("n_bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("phash", pa.int64()),
    ]
)
