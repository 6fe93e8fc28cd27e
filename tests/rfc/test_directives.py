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
