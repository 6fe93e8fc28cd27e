"""Request and response directives (RFC 9111 §5.2, RFC 9213) and every Cache-Status form
(RFC 9211 §2), end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rfc.origin import Answer, Harness, is_hit, status_of

FRESH = Answer(headers={"cache-control": "max-age=100", "etag": '"f"'})


async def test_request_no_cache_forces_validation(cache: Harness) -> None:
    """§5.2.1.4: the stored response is validated; Cache-Status says fwd=request."""
    cache.script("/d", FRESH)
    await cache.get("/d")
    response = await cache.get("/d", cache_control="no-cache")
    assert status_of(response).startswith("tiercache; fwd=request")
    assert cache.origin.calls["/d"] == 2
    assert cache.origin.seen[-1]["if-none-match"] == '"f"'


async def test_pragma_no_cache_without_cache_control(cache: Harness) -> None:
    """§5.4: Pragma: no-cache acts as Cache-Control: no-cache when Cache-Control is absent."""
    cache.script("/p", FRESH)
    await cache.get("/p")
    await cache.get("/p", pragma="no-cache")
    assert cache.origin.calls["/p"] == 2


async def test_request_max_age_zero_validates(cache: Harness) -> None:
    """§5.2.1.1: max-age=0 does not accept a response older than 0 s."""
    cache.script("/m", FRESH)
    await cache.get("/m")
    cache.clock.advance(5)
    await cache.get("/m", cache_control="max-age=0")
    assert cache.origin.calls["/m"] == 2


async def test_request_min_fresh(cache: Harness) -> None:
    """§5.2.1.3: min-fresh asks for at least that much freshness left."""
    cache.script("/mf", FRESH)
    await cache.get("/mf")
    cache.clock.advance(50)
    assert is_hit(await cache.get("/mf", cache_control="min-fresh=10"))
    assert not is_hit(await cache.get("/mf", cache_control="min-fresh=80"))


async def test_request_max_stale_accepts_stale(cache: Harness) -> None:
    """§5.2.1.2: max-stale lets the client accept a stale response."""
    cache.script("/ms", FRESH)
    await cache.get("/ms")
    cache.clock.advance(130)
    assert is_hit(await cache.get("/ms", cache_control="max-stale=60"))
    assert cache.origin.calls["/ms"] == 1


async def test_request_no_store_is_neither_served_nor_stored(cache: Harness) -> None:
    """§5.2.1.5: no-store on the request."""
    cache.script("/ns", FRESH)
    first = await cache.get("/ns", cache_control="no-store")
    assert "stored" not in status_of(first)
    assert not is_hit(await cache.get("/ns"))


async def test_only_if_cached_miss_is_504(cache: Harness) -> None:
    """§5.2.1.7: only-if-cached with nothing stored → 504, the app is not called."""
    response = await cache.get("/none", cache_control="only-if-cached")
    assert response.status_code == 504
    assert cache.origin.calls["/none"] == 0


async def test_cdn_cache_control_wins_over_cache_control(cache: Harness) -> None:
    """RFC 9213: CDN-Cache-Control is used by the cache instead of Cache-Control."""
    cache.script(
        "/cdn", Answer(headers={"cache-control": "no-store", "cdn-cache-control": "max-age=100"})
    )
    first = await cache.get("/cdn")
    assert first.headers["cache-control"] == "no-store", "passed on to the client untouched"
    assert is_hit(await cache.get("/cdn"))


async def test_targeted_field_wins_over_cdn_cache_control(tmp_path: Path) -> None:
    harness = Harness(tmp_path, http={"targeted_cache_control": "Tiercache-Cache-Control"})
    try:
        harness.script(
            "/t",
            Answer(
                headers={
                    "cdn-cache-control": "max-age=100",
                    "tiercache-cache-control": "no-store",
                }
            ),
        )
        await harness.get("/t")
        assert not is_hit(await harness.get("/t"))
    finally:
        await harness.close()


async def test_must_understand_with_known_status_is_stored(cache: Harness) -> None:
    """§5.2.2.3: must-understand + no-store: stored when the status code is understood."""
    cache.script("/mu", Answer(headers={"cache-control": "must-understand, no-store, max-age=60"}))
    await cache.get("/mu")
    assert is_hit(await cache.get("/mu"))


@pytest.mark.parametrize(
    ("path", "answer", "expect"),
    [
        ("/hit", FRESH, "tiercache; hit; ttl=100; detail=hot"),
        ("/miss", FRESH, "tiercache; fwd=uri-miss; stored"),
        ("/nostore", Answer(headers={"cache-control": "no-store"}), "tiercache; fwd=uri-miss"),
    ],
)
async def test_cache_status_forms(cache: Harness, path: str, answer: Answer, expect: str) -> None:
    cache.script(path, answer)
    response = await cache.get(path)
    if path == "/hit":
        response = await cache.get(path)
    assert status_of(response) == expect


async def test_cache_status_key_with_debug_key(tmp_path: Path) -> None:
    harness = Harness(tmp_path, http={"debug_key": True, "cache_name": "edge"})
    try:
        harness.script("/k", FRESH)
        response = await harness.get("/k?b=2&a=1")
        assert status_of(response).startswith("edge; fwd=uri-miss; stored; key=")
        assert "origin.test/k" in status_of(response)
    finally:
        await harness.close()


async def test_cdn_cache_control_no_store_wins_over_cache_control_max_age(cache: Harness) -> None:
    """RFC 9213 §2.2: the targeted field replaces Cache-Control, in both directions."""
    cache.script(
        "/cdn2", Answer(headers={"cache-control": "max-age=100", "cdn-cache-control": "no-store"})
    )
    first = await cache.get("/cdn2")
    assert "stored" not in status_of(first)
    assert not is_hit(await cache.get("/cdn2"))
    assert cache.origin.calls["/cdn2"] == 2


async def test_must_understand_with_unknown_status_is_not_stored(cache: Harness) -> None:
    """§5.2.2.3: must-understand and a status code the cache does not understand."""
    cache.script("/mu2", Answer(299, {"cache-control": "must-understand, no-store, max-age=60"}))
    await cache.get("/mu2")
    assert not is_hit(await cache.get("/mu2"))


async def test_authorization_with_s_maxage_is_shared(cache: Harness) -> None:
    """§3.5: s-maxage (or public, must-revalidate) lets a shared cache store it."""
    cache.script("/auth", Answer(headers={"cache-control": "s-maxage=60"}))
    await cache.get("/auth", authorization="Bearer a")
    assert is_hit(await cache.get("/auth", authorization="Bearer a"))


async def test_qualified_private_stores_the_response_without_the_field(cache: Harness) -> None:
    """§5.2.2.7: private="Set-Cookie" keeps the cookie from the cache, not the response."""
    cache.script(
        "/qp",
        Answer(headers={"cache-control": 'max-age=60, private="Set-Cookie"', "set-cookie": "s=1"}),
    )
    first = await cache.get("/qp")
    assert first.headers["set-cookie"] == "s=1", "the client that caused it still gets it"
    hit = await cache.get("/qp")
    assert is_hit(hit)
    assert "set-cookie" not in hit.headers


async def test_bare_max_stale_accepts_any_staleness(cache: Harness) -> None:
    """§5.2.1.2: max-stale without a value accepts a response however stale."""
    cache.script("/bare", FRESH)
    await cache.get("/bare")
    cache.clock.advance(10_000)
    assert is_hit(await cache.get("/bare", cache_control="max-stale"))


async def test_request_max_stale_does_not_override_must_revalidate(cache: Harness) -> None:
    """§5.2.2.2: must-revalidate: never served stale, whatever the request accepts."""
    cache.script("/mr", Answer(headers={"cache-control": "max-age=10, must-revalidate"}))
    await cache.get("/mr")
    cache.clock.advance(20)
    assert not is_hit(await cache.get("/mr", cache_control="max-stale=100"))


async def test_only_if_cached_serves_a_fresh_entry(cache: Harness) -> None:
    """§5.2.1.7: only-if-cached with a usable entry is a normal hit."""
    cache.script("/oic", FRESH)
    await cache.get("/oic")
    assert is_hit(await cache.get("/oic", cache_control="only-if-cached"))


async def test_only_if_cached_with_a_stale_entry_is_504(cache: Harness) -> None:
    cache.script("/oic2", FRESH)
    await cache.get("/oic2")
    cache.clock.advance(200)
    response = await cache.get("/oic2", cache_control="only-if-cached")
    assert response.status_code == 504
    assert cache.origin.calls["/oic2"] == 1


def _changing(request: dict[str, str]) -> Answer:
    return Answer(headers={"cache-control": "max-age=100", "etag": '"new"'}, body=b"new")


async def _status_after(harness: Harness, path: str, step: str) -> str:
    """Drive one scenario and return the Cache-Status of its last response."""
    if step == "hit":
        harness.script(path, FRESH)
        await harness.get(path)
        return status_of(await harness.get(path))
    if step == "stored-miss":
        harness.script(path, FRESH)
        return status_of(await harness.get(path))
    if step == "unstored-miss":
        harness.script(path, Answer(headers={"cache-control": "no-store"}))
        return status_of(await harness.get(path))
    if step == "vary-miss":
        harness.script(path, Answer(headers={"cache-control": "max-age=100", "vary": "Accept"}))
        await harness.get(path, accept="a/b")
        return status_of(await harness.get(path, accept="c/d"))
    if step == "stale-304":
        harness.script(path, Answer(headers={"cache-control": "max-age=1", "etag": '"f"'}))
        await harness.get(path)
        harness.clock.advance(5)
        harness.script(path, Answer(304, {"etag": '"f"', "cache-control": "max-age=100"}))
        return status_of(await harness.get(path))
    if step == "stale-200":
        harness.script(path, Answer(headers={"cache-control": "max-age=1", "etag": '"f"'}))
        await harness.get(path)
        harness.clock.advance(5)
        harness.script(path, _changing)
        return status_of(await harness.get(path))
    if step == "request":
        harness.script(path, FRESH)
        await harness.get(path)
        harness.script(path, _changing)
        return status_of(await harness.get(path, cache_control="no-cache"))
    if step == "stale-while-revalidate":
        harness.script(
            path, Answer(headers={"cache-control": "max-age=1, stale-while-revalidate=60"})
        )
        await harness.get(path)
        harness.clock.advance(11)
        return status_of(await harness.get(path))
    if step == "stale-if-error":
        harness.script(path, Answer(headers={"cache-control": "max-age=1, stale-if-error=60"}))
        await harness.get(path)
        harness.clock.advance(5)
        harness.script(path, Answer(502, {}, b"bad gateway"))
        return status_of(await harness.get(path))
    if step == "method":
        harness.script(path, FRESH)
        return status_of(await harness.request("DELETE", path))
    if step == "only-if-cached":
        return status_of(await harness.get(path, cache_control="only-if-cached"))
    raise AssertionError(step)


@pytest.mark.parametrize(
    ("step", "expect"),
    [
        ("hit", "tiercache; hit; ttl=100; detail=hot"),  # RFC 9211 §2.1, §2.5, §2.8
        ("stored-miss", "tiercache; fwd=uri-miss; stored"),  # §2.2, §2.6
        ("unstored-miss", "tiercache; fwd=uri-miss"),
        ("vary-miss", "tiercache; fwd=vary-miss; stored"),
        ("stale-304", "tiercache; fwd=stale; fwd-status=304"),  # §2.3
        ("stale-200", "tiercache; fwd=stale; fwd-status=200; stored"),
        ("request", "tiercache; fwd=request; fwd-status=200; stored"),
        ("stale-while-revalidate", "tiercache; hit; ttl=-10; detail=hot"),  # a stale hit
        ("stale-if-error", "tiercache; fwd=stale; fwd-status=502; detail=stale-if-error"),
        ("method", "tiercache; fwd=method"),
        ("only-if-cached", "tiercache; fwd=miss"),
    ],
)
async def test_every_cache_status_form(cache: Harness, step: str, expect: str) -> None:
    """RFC 9211 §2: one Cache-Status member per outcome, in Structured Field syntax."""
    assert await _status_after(cache, f"/form-{step}", step) == expect


async def test_cache_status_bypass_for_an_uncached_route(tmp_path: Path) -> None:
    """RFC 9211 §2.2: fwd=bypass where configuration says not to use the cache."""
    harness = Harness(tmp_path, routes=[{"pattern": "/private/**", "cache": False}])
    try:
        harness.script("/private/x", FRESH)
        for _ in range(2):
            assert status_of(await harness.get("/private/x")) == "tiercache; fwd=bypass"
        assert harness.origin.calls["/private/x"] == 2
    finally:
        await harness.close()


@pytest.mark.parametrize(
    "cache_control", ["max-age=60", "s-maxage=60", "public", "public, max-age=60"]
)
async def test_unknown_status_with_explicit_freshness_is_stored(
    cache: Harness, cache_control: str
) -> None:
    """§3: a status the cache does not know is stored with explicit freshness or public."""
    fields = {"cache-control": cache_control, "last-modified": cache.clock.date(-36000)}
    cache.script("/u", Answer(299, fields))
    await cache.get("/u")
    cache.clock.advance(1)
    again = await cache.get("/u")
    assert again.status_code == 299
    assert is_hit(again)
    assert cache.origin.calls["/u"] == 1


async def test_unknown_status_with_expires_is_stored(cache: Harness) -> None:
    cache.script("/ue", Answer(599, {"expires": cache.clock.date(60), "date": cache.clock.date()}))
    await cache.get("/ue")
    assert is_hit(await cache.get("/ue"))


async def test_unknown_status_without_explicit_freshness_is_not_stored(cache: Harness) -> None:
    """§3: no heuristic freshness for a status the cache does not know."""
    cache.script("/un", Answer(299, {"last-modified": cache.clock.date(-36000)}))
    await cache.get("/un")
    assert not is_hit(await cache.get("/un"))
    assert cache.origin.calls["/un"] == 2
