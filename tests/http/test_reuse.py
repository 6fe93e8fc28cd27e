"""Reusing stored responses (RFC 9111 §4, §4.2.4, §5.2.1; RFC 5861)."""

from __future__ import annotations

import math

import pytest

from tests.http.support import NOW, stored
from tiercache_mw.http.cache_control import RequestCacheControl
from tiercache_mw.http.reuse import Reuse, decide_reuse, may_serve_stale_on_error

R = RequestCacheControl


@pytest.mark.parametrize(
    ("cache_control", "req", "elapsed", "expect"),
    [
        ("max-age=100", R(), 50, Reuse.FRESH),
        ("max-age=100", R(), 100, Reuse.VALIDATE),  # §4.2: fresh only while age < lifetime
        ("max-age=100", R(), 150, Reuse.VALIDATE),
        ("no-cache, max-age=100", R(), 0, Reuse.VALIDATE),  # §5.2.2.4
        ("max-age=100", R(no_cache=True), 0, Reuse.VALIDATE),  # §5.2.1.4
        ("max-age=100", R(max_age=10), 5, Reuse.FRESH),  # §5.2.1.1
        ("max-age=100", R(max_age=10), 20, Reuse.VALIDATE),
        ("max-age=100", R(min_fresh=10), 50, Reuse.FRESH),  # §5.2.1.3
        ("max-age=100", R(min_fresh=80), 50, Reuse.VALIDATE),
        ("max-age=100", R(max_stale=60), 130, Reuse.STALE_ALLOWED),  # §5.2.1.2
        ("max-age=100", R(max_stale=60), 170, Reuse.VALIDATE),
        ("max-age=100", R(max_stale=math.inf), 10**6, Reuse.STALE_ALLOWED),
        ("max-age=100, must-revalidate", R(max_stale=60), 130, Reuse.VALIDATE),  # §4.2.4
        ("max-age=100, proxy-revalidate", R(max_stale=60), 130, Reuse.VALIDATE),  # §5.2.2.8
        ("s-maxage=100", R(max_stale=60), 130, Reuse.VALIDATE),  # §5.2.2.10
        ("max-age=10, stale-while-revalidate=60", R(), 30, Reuse.STALE_REVALIDATE),  # 5861 §3
        ("max-age=10, stale-while-revalidate=60", R(), 80, Reuse.VALIDATE),
        ("max-age=10, stale-while-revalidate=60, must-revalidate", R(), 30, Reuse.VALIDATE),
        ("max-age=10, stale-while-revalidate=60", R(min_fresh=1), 30, Reuse.VALIDATE),
        ("max-age=10", R(), 10, Reuse.VALIDATE),  # swr=0 never serves stale
    ],
)
def test_decide_reuse(
    cache_control: str, req: RequestCacheControl, elapsed: float, expect: Reuse
) -> None:
    decision = decide_reuse(stored(cache_control=cache_control), req, NOW + elapsed)
    assert decision.action is expect
    assert decision.age == elapsed


def test_ttl_goes_negative_once_stale() -> None:
    decision = decide_reuse(
        stored(cache_control="max-age=10, stale-while-revalidate=60"), R(), NOW + 20
    )
    assert (decision.action, decision.ttl) == (Reuse.STALE_REVALIDATE, -10)


def test_rule_stale_while_revalidate_applies_without_the_directive() -> None:
    response = stored(cache_control="max-age=10", rule_swr=30)
    assert decide_reuse(response, R(), NOW + 20).action is Reuse.STALE_REVALIDATE


@pytest.mark.parametrize(
    ("cache_control", "rule_sie", "req", "elapsed", "expect"),
    [
        ("max-age=10, stale-if-error=60", None, R(), 30, True),  # RFC 5861 §4
        ("max-age=10, stale-if-error=60", None, R(), 80, False),  # window over
        ("max-age=10", None, R(), 30, False),
        ("max-age=10", 60, R(), 30, True),  # the rule's allowance
        ("max-age=10, stale-if-error=5", 60, R(), 30, False),  # the response's own wins
        ("max-age=10", None, R(stale_if_error=60), 30, True),  # the request may grant it
        ("max-age=10, must-revalidate, stale-if-error=60", None, R(), 30, False),  # §4.2.4
        ("no-cache, stale-if-error=60", None, R(), 30, False),
        ("s-maxage=10, stale-if-error=60", None, R(), 30, False),  # s-maxage: proxy-revalidate
    ],
)
def test_may_serve_stale_on_error(
    cache_control: str,
    rule_sie: float | None,
    req: RequestCacheControl,
    elapsed: float,
    expect: bool,
) -> None:
    response = stored(cache_control=cache_control, rule_sie=rule_sie)
    assert may_serve_stale_on_error(response, req, NOW + elapsed) is expect
