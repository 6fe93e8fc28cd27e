"""Freshness lifetime and age (RFC 9111 §4.2)."""

from __future__ import annotations

import pytest

from tests.http.support import NOW, date, hdrs, stored
from tiercache_mw.config import HttpConfig
from tiercache_mw.http.cache_control import response_cache_control
from tiercache_mw.http.freshness import current_age, initial_age
from tiercache_mw.http.response import StorePolicy, lifetime_for

HEURISTIC_CAP = HttpConfig(heuristic_max_seconds=3600)


def lifetime(status: int = 200, **fields: str) -> float:
    """The lifetime the store computes, with no operator rule in play."""
    headers = hdrs(**fields)
    return lifetime_headers(status, headers)


def lifetime_headers(status: int, headers: list[tuple[bytes, bytes]]) -> float:
    cc = response_cache_control(headers)
    return lifetime_for(status, headers, cc, response_time=NOW, policy=StorePolicy(HEURISTIC_CAP))


@pytest.mark.parametrize(
    ("status", "fields", "expect"),
    [
        (200, {"cache_control": "s-maxage=50, max-age=10"}, 50),  # §4.2.1: s-maxage first
        (200, {"cache_control": "max-age=10", "expires": date(500)}, 10),  # max-age over Expires
        (200, {"date": date(), "expires": date(100)}, 100),  # Expires - Date
        (200, {"expires": date(100)}, 100),  # no Date: the time received (§4.2.1)
        (200, {"date": date(-50), "expires": date(100)}, 150),
        (200, {"expires": "0"}, 0),  # §5.3: invalid Expires = already expired
        (200, {"date": date(), "expires": date(-10)}, 0),
        (200, {"cache_control": "max-age=10, max-age=20"}, 0),  # §4.2.1: duplicate → stale
        (200, {"cache_control": "max-age=ten"}, 0),
        (200, {"date": date(), "last_modified": date(-1000)}, 100),  # §4.2.2: 10 %
        (404, {"date": date(), "last_modified": date(-1000)}, 100),  # heuristically cacheable
        (302, {"date": date(), "last_modified": date(-1000)}, 0),  # not heuristically cacheable
        (302, {"cache_control": "public", "last_modified": date(-1000)}, 100),  # public allows it
        (200, {"date": date(), "last_modified": date(-(10**7))}, 3600),  # capped
        (200, {"date": date(), "last_modified": date(100)}, 0),  # modified in the future
        (200, {"expires": "0", "last_modified": date(-1000)}, 0),  # explicit wins over heuristic
        (200, {}, 0),
    ],
)
def test_freshness_lifetime(status: int, fields: dict[str, str], expect: float) -> None:
    assert lifetime(status, **fields) == pytest.approx(expect)


def test_targeted_field_ignores_expires() -> None:
    """RFC 9213 §2.2: with a targeted field in use, Expires does not apply either."""
    assert lifetime(cdn_cache_control="public", expires=date(100)) == 0
    assert lifetime(cache_control="public", expires=date(100)) == 100


def test_differing_expires_lines_are_stale() -> None:
    headers = [(b"expires", date(10).encode()), (b"expires", date(20).encode())]
    assert lifetime_headers(200, headers) == 0


@pytest.mark.parametrize(
    ("fields", "request_time", "expect"),
    [
        ({}, NOW, 0),
        ({"age": "30"}, NOW, 30),  # the upstream's Age counts (§4.2.3)
        ({"age": "30"}, NOW - 5, 35),  # plus the response delay
        ({"date": date(-40)}, NOW, 40),  # apparent age
        ({"date": date(-40), "age": "10"}, NOW, 40),  # the larger of the two
        ({"date": date(60)}, NOW, 0),  # a Date in the future is not a negative age
        ({"age": "bogus"}, NOW, 0),  # §5.1: an invalid Age is ignored
    ],
)
def test_initial_age(fields: dict[str, str], request_time: float, expect: float) -> None:
    assert initial_age(hdrs(**fields), request_time=request_time, response_time=NOW) == expect


def test_current_age_adds_resident_time() -> None:
    response = stored(age="30", cache_control="max-age=100")
    assert current_age(response, NOW + 10) == 40


@pytest.mark.parametrize(
    ("rule_ttl", "default_ttl", "fields", "expect"),
    [
        (50, 0, {}, 50),  # a rule fills in when the response sets nothing
        (50, 0, {"cache_control": "max-age=5"}, 5),  # the response's own lifetime wins
        (None, 20, {}, 20),  # then http.default_ttl_seconds
        (50, 20, {"last_modified": date(-(10**6))}, 50),  # the rule wins over the heuristic
        (None, 0, {"last_modified": date(-1000)}, 100),
    ],
)
def test_rules_and_defaults(
    rule_ttl: float | None, default_ttl: float, fields: dict[str, str], expect: float
) -> None:
    http = HttpConfig(default_ttl_seconds=default_ttl)
    assert stored(200, fields, rule_ttl=rule_ttl, http=http).freshness_lifetime == expect


def test_rule_does_not_make_an_error_status_fresh() -> None:
    assert stored(500, rule_ttl=50).freshness_lifetime == 0
