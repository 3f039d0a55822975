"""Secrets in image URLs: what the fetch may use and the released dataset must not hold.

Crawled pages link images with credentials in them: userinfo (``https://user:password@host/a.jpg``) and signed
or tokenised query strings (``?X-Amz-Signature=...``, ``?sig=...``, ``?token=...``). The fetch uses a URL as
given; every table and export downstream of it holds :func:`redact_url`'s form instead, which drops the userinfo
and every query (or fragment) parameter whose name is in a configured list, and keeps the rest of the URL
byte for byte. Pure: no Spark import; ``realsyn`` wraps :func:`redact_urls` as a pandas UDF.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

import pandas as pd

# Query parameters that carry a signature, a credential or a token, compared case-folded after percent-decoding.
SECRET_QUERY_PARAMS: tuple[str, ...] = (
    # AWS S3 presigned URLs: signature version 4 and 2; CloudFront signed URLs.
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "awsaccesskeyid",
    "signature",
    "key-pair-id",
    "policy",
    # Google Cloud Storage signed URLs (V4 and V2).
    "x-goog-signature",
    "x-goog-credential",
    "googleaccessid",
    # Azure Blob Storage shared access signatures.
    "sig",
    # Common API and CDN tokens.
    "token",
    "access_token",
    "auth",
    "auth_token",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "passwd",
    "client_secret",
)

# A URL inside free text (an error message): scheme, then anything up to white space or a quote or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]]+")
# The userinfo of a URL that urllib cannot split (an unclosed IPv6 bracket): ``scheme://userinfo@``.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def has_userinfo(url: str) -> bool:
    """Whether ``url`` names a user or password before its host (``scheme://user:password@host/...``)."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        return _USERINFO.match(url) is not None
    return "@" in netloc


def _without_params(part: str, secret: frozenset[str]) -> str:
    """``part`` (a query or a fragment) without its ``name=value`` pieces whose name is in ``secret``."""
    pieces = part.split("&")
    kept = [p for p in pieces if urllib.parse.unquote_plus(p.partition("=")[0]).strip().casefold() not in secret]
    return part if len(kept) == len(pieces) else "&".join(kept)


def redact_url(url: str, secret_params: Iterable[str] = SECRET_QUERY_PARAMS) -> tuple[str, bool]:
    """``url`` without userinfo and secret parameters, and whether anything was removed.

    Everything else stays as written (encoding, order, other parameters), so a URL without secrets is returned
    unchanged. ``data:`` URIs have no host or parameters and are returned as they are.
    """
    if "@" not in url and "?" not in url and "#" not in url:
        return url, False
    secret = frozenset(p.casefold() for p in secret_params)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        stripped = _USERINFO.sub(r"\1", url)
        return stripped, stripped != url
    if not parts.netloc:  # data:, a local path: nothing that names a host or a signed request
        return url, False
    netloc = parts.netloc.rpartition("@")[2]
    query = _without_params(parts.query, secret)
    fragment = _without_params(parts.fragment, secret) if "=" in parts.fragment else parts.fragment
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url, False
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment)), True


def redact_text(text: str, secret_params: Iterable[str] = SECRET_QUERY_PARAMS) -> str:
    """``text`` (an error message, say) with every URL in it redacted by :func:`redact_url`."""
    params = tuple(secret_params)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0), params)[0], text)


def redact_urls(urls: pd.Series, secret_params: Iterable[str] = SECRET_QUERY_PARAMS) -> pd.DataFrame:
    """Column ``url`` (redacted; null stays null) and ``url_redacted`` (bool) for a Series of URLs."""
    params = tuple(secret_params)
    pairs = [redact_url(u, params) if isinstance(u, str) else (None, False) for u in urls]
    return pd.DataFrame(pairs, columns=["url", "url_redacted"], index=urls.index)
