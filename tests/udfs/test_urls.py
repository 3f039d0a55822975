import pandas as pd
import pytest

from udfs.urls import has_userinfo, redact_text, redact_url, redact_urls


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # userinfo, with and without a password, and an '@' inside the password
        ("http://user:password@example.org/a.jpg", "http://example.org/a.jpg"),
        ("https://user@example.org:8443/a.jpg?w=2", "https://example.org:8443/a.jpg?w=2"),
        ("https://u:p@ss@example.org/a.jpg", "https://example.org/a.jpg"),
        # AWS SigV4 presigned: the signature, credential and session token go, the rest stays in order
        (
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261205"
            "&X-Amz-Date=20261205T000000Z&X-Amz-Expires=900&X-Amz-Security-Token=FQoG&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=deadbeef",
            "https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261205T000000Z"
            "&X-Amz-Expires=900&X-Amz-SignedHeaders=host",
        ),
        # GCS V4 and Azure SAS
        (
            "https://storage.googleapis.com/b/o.png?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p"
            "&X-Goog-Signature=0a1b",
            "https://storage.googleapis.com/b/o.png?X-Goog-Algorithm=GOOG4-RSA-SHA256",
        ),
        (
            "https://acct.blob.core.windows.net/c/b.jpg?sv=2022-11-02&se=2026-12-31&sp=r&sig=abc%2Bdef%3D",
            "https://acct.blob.core.windows.net/c/b.jpg?sv=2022-11-02&se=2026-12-31&sp=r",
        ),
        # CloudFront, generic tokens (any case, percent-encoded name), a token in the fragment
        (
            "https://d.cloudfront.net/a.jpg?Expires=1&Signature=xyz&Key-Pair-Id=K1",
            "https://d.cloudfront.net/a.jpg?Expires=1",
        ),
        ("https://cdn.example/a.jpg?TOKEN=t&size=large", "https://cdn.example/a.jpg?size=large"),
        ("https://cdn.example/a.jpg?api%5Fkey=t", "https://cdn.example/a.jpg"),
        ("https://cdn.example/a.jpg#access_token=t&x=1", "https://cdn.example/a.jpg#x=1"),
    ],
)
def test_redact_url_removes_each_form(url: str, expected: str) -> None:
    assert redact_url(url) == (expected, True)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/a.jpg",
        "https://example.org/a%20b.jpg?w=2&h=3#top",
        "https://example.org/a.jpg?",  # an empty query stays as written
        "https://example.org/keys/tokenised.jpg?monkey=1&tokens=2",  # names that only contain a secret name
        "data:image/png;base64,iVBORw0KGgo=",
        "/data/images/a@2x.jpg",  # a local path with '@' has no host
        "s3://bucket/a.jpg",
    ],
)
def test_redact_url_keeps_urls_without_secrets_as_written(url: str) -> None:
    assert redact_url(url) == (url, False)


def test_redact_url_takes_a_configured_list() -> None:
    assert redact_url("https://e.org/a.jpg?session=s&key=k", ["Session"]) == ("https://e.org/a.jpg?key=k", True)


def test_userinfo_of_a_url_urllib_cannot_split_is_still_removed() -> None:
    assert redact_url("http://user:pw@[::1/a.jpg") == ("http://[::1/a.jpg", True)
    assert has_userinfo("http://user:pw@[::1/a.jpg")


def test_has_userinfo() -> None:
    assert has_userinfo("https://user:pw@example.org/a.jpg")
    assert not has_userinfo("https://example.org/a@2x.jpg")
    assert not has_userinfo("data:image/png;base64,AAAA")


def test_redact_text_redacts_every_url_in_a_message() -> None:
    text = "timeout (https://u:secret@e.org/a.jpg?sig=s1) after redirect to 'https://f.org/b.jpg?token=s2'"
    out = redact_text(text)
    assert "secret" not in out and "s1" not in out and "s2" not in out
    assert out == "timeout (https://e.org/a.jpg) after redirect to 'https://f.org/b.jpg'"


def test_redact_urls_frame_keeps_nulls_and_index() -> None:
    urls = pd.Series(["https://u:p@e.org/a.jpg", None, "https://e.org/b.jpg"], index=[5, 6, 7])
    out = redact_urls(urls)
    assert out.index.tolist() == [5, 6, 7]
    assert out["url"].tolist() == ["https://e.org/a.jpg", None, "https://e.org/b.jpg"]
    assert out["url_redacted"].tolist() == [True, False, False]
