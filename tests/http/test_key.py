"""Cache keys (RFC 9111 §2, §4.1) and their normalisation (docs/http-semantics.md)."""

from __future__ import annotations

import pytest

from tests.http.support import hdrs
from tiercache_mw.http.key import KeyMemo, normalise_url, primary_key, url_for, vary_key


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("GET", "http", "example.com", "/p", ""), ("HEAD", "http", "example.com", "/p", "")),
        (("GET", "http", "Example.COM", "/p", ""), ("GET", "HTTP", "example.com", "/p", "")),
        (("GET", "http", "example.com:80", "/p", ""), ("GET", "http", "example.com", "/p", "")),
        (("GET", "https", "example.com:443", "/", ""), ("GET", "https", "example.com", "/", "")),
        (("GET", "http", "e.com", "/p", "b=2&a=1"), ("GET", "http", "e.com", "/p", "a=1&b=2")),
        (("GET", "http", "e.com", "/p", "a=1&&b=2&"), ("GET", "http", "e.com", "/p", "a=1&b=2")),
        (("GET", "http", "e.com", "/p", ""), ("GET", "http", "e.com", "/p", "&")),
        (("GET", "http", "e.com", "", ""), ("GET", "http", "e.com", "/", "")),
    ],
)
def test_same_key(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert primary_key(*a) == primary_key(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("GET", "http", "e.com", "/p", ""), ("POST", "http", "e.com", "/p", "")),
        (("GET", "http", "e.com", "/p", ""), ("GET", "https", "e.com", "/p", "")),
        (("GET", "http", "e.com:8080", "/p", ""), ("GET", "http", "e.com", "/p", "")),
        (("GET", "https", "e.com:80", "/p", ""), ("GET", "https", "e.com", "/p", "")),
        (("GET", "http", "e.com", "/a%2Fb", ""), ("GET", "http", "e.com", "/a/b", "")),
        (("GET", "http", "e.com", "/P", ""), ("GET", "http", "e.com", "/p", "")),
        (("GET", "http", "e.com", "/p", "a=1&a=2"), ("GET", "http", "e.com", "/p", "a=2&a=1")),
        (("GET", "http", "e.com", "/p", "a=%41"), ("GET", "http", "e.com", "/p", "a=A")),
    ],
)
def test_different_keys(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert primary_key(*a) != primary_key(*b)


def test_url_for_is_what_purge_matches() -> None:
    assert url_for("http", "testserver", "/products/3", "") == "http://testserver/products/3"
    assert url_for("http", "TestServer:80", "/p", "b=1&a=2") == "http://testserver/p?a=2&b=1"
    assert normalise_url("HTTP://TestServer:80/p?b=1&a=2#frag") == "http://testserver/p?a=2&b=1"
    assert normalise_url("/relative?b=1&a=2") == "/relative?b=1&a=2"


@pytest.mark.parametrize(
    ("names", "a", "b", "same"),
    [
        (("accept-language",), {"accept_language": "en,  fr"}, {"accept_language": "en, fr"}, True),
        (("accept-language",), {"accept_language": "EN"}, {"accept_language": "en"}, True),
        (("accept-language",), {"accept_language": "en"}, {"accept_language": "fr"}, False),
        (("accept-language",), {}, {"accept_language": "en"}, False),  # absent is its own variant
        (("accept-language",), {}, {"accept_language": ""}, False),  # and differs from empty
        (
            ("accept-encoding",),
            {"accept_encoding": "br, gzip"},
            {"accept_encoding": "gzip,br"},
            True,
        ),
        (("accept",), {"accept": "text/html ; q=0.9"}, {"accept": "text/html;q=0.9"}, True),
        (("x-user",), {"x_user": "Ann"}, {"x_user": "ann"}, False),  # unknown fields keep case
        (("accept", "x-a"), {"accept": "a", "x_a": "b"}, {"accept": "a", "x_a": "c"}, False),
    ],
)
def test_vary_key(names: tuple[str, ...], a: dict[str, str], b: dict[str, str], same: bool) -> None:
    """RFC 9111 §4.1: values are compared after normalisation (whitespace, case where safe)."""
    key_a = vary_key("k", names, hdrs(**a))
    key_b = vary_key("k", names, hdrs(**b))
    assert key_a is not None
    assert key_b is not None
    assert (key_a == key_b) is same
    assert key_a.startswith("k")


def test_vary_lines_are_joined() -> None:
    split = [(b"accept-language", b"en"), (b"accept-language", b"fr")]
    assert vary_key("k", ("accept-language",), split) == vary_key(
        "k", ("accept-language",), hdrs(accept_language="en, fr")
    )


def test_vary_star_never_matches() -> None:
    assert vary_key("k", ("*",), []) is None


def test_key_memo_empties_itself_when_full() -> None:
    memo = KeyMemo(limit=2)
    assert memo.remember(("a",), "key-a") == "key-a"
    memo.remember(("b",), "key-b")
    assert memo.get(("a",)) == "key-a"
    memo.remember(("c",), "key-c")  # full: the old keys go, the new one stays
    assert dict(memo) == {("c",): "key-c"}
