"""What a stored response keeps (RFC 9111 §3.1, §3.2) and the tags it carries."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from tests.http.support import HTTP, NOW, date, hdrs, stored
from tiercache_mw.config import HttpConfig
from tiercache_mw.http.response import client_headers, surrogate_tags, vary_names


def names(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    return {name for name, _ in headers}


def test_stored_headers_drop_hop_by_hop_and_owned_fields() -> None:
    """§3.1: hop-by-hop fields, those named by Connection, and Age are not kept; an upstream's
    Cache-Status is (RFC 9211 §2), and surrogate keys are not unless exposed."""
    response = stored(
        cache_control="max-age=6", connection="x-trace, close", x_trace="1", keep_alive="5",
        transfer_encoding="chunked", age="3", cache_status="up; hit", x_kept="y",
        surrogate_key="a b", cache_tag="c",
    )  # fmt: skip
    assert names(response.headers) == {b"cache-control", b"x-kept", b"cache-status"}


def test_surrogate_keys_kept_when_exposed() -> None:
    response = stored(http=HttpConfig(expose_surrogate_keys=True), surrogate_key="a")
    assert names(response.headers) == {b"surrogate-key"}


def test_a_response_without_date_is_stored_without_one() -> None:
    """The time it arrived stands in for Date in its lifetime and age (RFC 9111 §4.2.1),
    but no Date is added: the server dates every response it sends, and behind uvicorn or
    gunicorn an added one would go out as a second Date line."""
    response = stored(at=NOW + 0.7, expires=date(10))
    assert b"date" not in names(response.headers)
    assert response.freshness_lifetime == pytest.approx(9.3)
    assert response.initial_age == 0


def test_a_response_with_date_keeps_its_own() -> None:
    response = stored(fields={"date": date(-5)}, cache_control="max-age=60")
    assert [value for name, value in response.headers if name == b"date"] == [date(-5).encode()]


@pytest.mark.parametrize(
    "cache_control", ['max-age=6, private="X-User"', 'max-age=6, no-cache="x-user"']
)
def test_qualified_private_and_no_cache_fields_are_not_stored(cache_control: str) -> None:
    """§5.2.2.7 / §5.2.2.4: the named fields go; the rest is reusable."""
    response = stored(cache_control=cache_control, x_user="ann", x_other="1")
    assert names(response.headers) == {b"cache-control", b"x-other"}
    assert not response.requires_validation


@pytest.mark.parametrize(
    ("cache_control", "requires_validation", "must_revalidate"),
    [
        ("max-age=6", False, False),
        ("no-cache", True, False),
        ("max-age=6, must-revalidate", False, True),
        ("max-age=6, proxy-revalidate", False, True),
        ("s-maxage=6", False, True),
    ],
)
def test_derived_flags(
    cache_control: str, requires_validation: bool, must_revalidate: bool
) -> None:
    response = stored(cache_control=cache_control)
    assert response.requires_validation is requires_validation
    assert response.must_revalidate is must_revalidate


def test_stale_allowances_prefer_the_response() -> None:
    response = stored(cache_control="max-age=1, stale-while-revalidate=5", rule_swr=50, rule_sie=9)
    assert (response.stale_while_revalidate, response.stale_if_error) == (5, 9)


@pytest.mark.parametrize(
    ("vary", "expect"),
    [
        ("Accept-Language", ("accept-language",)),
        ("accept, Accept-Encoding ,accept", ("accept", "accept-encoding")),
        ("Accept, *", ("*",)),
    ],
)
def test_vary_names(vary: str, expect: tuple[str, ...]) -> None:
    assert vary_names(hdrs(vary=vary)) == expect


def test_surrogate_tags_from_both_fields() -> None:
    headers = hdrs(surrogate_key="prod-1  all", cache_tag="prod-2, all ,")
    assert surrogate_tags(headers) == (
        ("surrogate-key", "prod-1"),
        ("surrogate-key", "all"),
        ("surrogate-key", "prod-2"),
    )


def test_client_headers_hide_surrogate_keys_unless_exposed() -> None:
    headers = hdrs(surrogate_key="a", cache_tag="b", age="4", etag='"e"', cache_status="up; hit")
    assert names(client_headers(headers, HTTP)) == {b"etag", b"cache-status"}
    exposed = client_headers(headers, HttpConfig(expose_surrogate_keys=True))
    assert names(exposed) == {b"etag", b"surrogate-key", b"cache-tag", b"cache-status"}
