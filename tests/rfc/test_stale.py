"""RFC 5861 stale-while-revalidate / stale-if-error, and RFC 9111 §4.2.4 limits on them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.rfc.origin import Answer, Harness, is_hit, status_of


async def wait_for_calls(harness: Harness, path: str, count: int) -> None:
    for _ in range(200):
        if harness.origin.calls[path] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} called {harness.origin.calls[path]} times, expected {count}")


async def test_stale_while_revalidate_answers_at_once_and_refreshes(cache: Harness) -> None:
    """RFC 5861 §3: serve the stale entry now, refresh it once in the background."""
    cache.script(
        "/swr",
        Answer(headers={"cache-control": "max-age=10, stale-while-revalidate=60"}, body=b"old"),
    )
    await cache.get("/swr")
    cache.clock.advance(20)
    cache.script("/swr", Answer(headers={"cache-control": "max-age=10"}, body=b"new"))
    stale = await cache.get("/swr")
    assert stale.content == b"old"
    assert is_hit(stale)
    assert "ttl=-10" in status_of(stale)
    await wait_for_calls(cache, "/swr", 2)
    for _ in range(100):
        fresh = await cache.get("/swr")
        if fresh.content == b"new":
            break
        await asyncio.sleep(0.01)
    assert fresh.content == b"new"
    assert is_hit(fresh)
    assert cache.origin.calls["/swr"] == 2, "one background refresh per key"


async def test_stale_while_revalidate_window_ends(cache: Harness) -> None:
    cache.script("/swr2", Answer(headers={"cache-control": "max-age=10, stale-while-revalidate=5"}))
    await cache.get("/swr2")
    cache.clock.advance(30)
    assert not is_hit(await cache.get("/swr2"))
    assert cache.origin.calls["/swr2"] == 2


async def test_stale_if_error_serves_stale_on_503(cache: Harness) -> None:
    """RFC 5861 §4: a 5xx from the app within the window is answered with the stale entry."""
    cache.script(
        "/sie", Answer(headers={"cache-control": "max-age=10, stale-if-error=60"}, body=b"good")
    )
    await cache.get("/sie")
    cache.clock.advance(20)
    cache.script("/sie", Answer(503, {}, b"down"))
    response = await cache.get("/sie")
    assert response.status_code == 200
    assert response.content == b"good"
    assert "fwd=stale; fwd-status=503" in status_of(response)


async def test_stale_if_error_serves_stale_when_the_app_raises(cache: Harness) -> None:
    cache.script("/boom", Answer(headers={"cache-control": "max-age=10, stale-if-error=60"}))
    await cache.get("/boom")
    cache.clock.advance(20)
    cache.origin.fail_with = RuntimeError("database down")
    response = await cache.get("/boom")
    assert response.status_code == 200
    assert response.content == b"hello"


async def test_stale_if_error_window_ends(cache: Harness) -> None:
    cache.script("/sie2", Answer(headers={"cache-control": "max-age=10, stale-if-error=5"}))
    await cache.get("/sie2")
    cache.clock.advance(30)
    cache.script("/sie2", Answer(503, {}, b"down"))
    assert (await cache.get("/sie2")).status_code == 503


async def test_must_revalidate_forbids_stale_if_error(cache: Harness) -> None:
    """§4.2.4 / §5.2.2.2: must-revalidate forbids serving stale, errors included."""
    cache.script(
        "/mr",
        Answer(headers={"cache-control": "max-age=10, must-revalidate, stale-if-error=60"}),
    )
    await cache.get("/mr")
    cache.clock.advance(20)
    cache.script("/mr", Answer(503, {}, b"down"))
    assert (await cache.get("/mr")).status_code == 503


async def test_rule_level_stale_if_error(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        routes=[{"pattern": "/r", "tags": {"type": "r"}}],
        ttl_rules=[{"tag": {"type": "r"}, "stale_if_error_seconds": 60}],
    )
    try:
        harness.script("/r", Answer(headers={"cache-control": "max-age=10"}))
        await harness.get("/r")
        harness.clock.advance(20)
        harness.script("/r", Answer(502, {}, b"bad gateway"))
        assert (await harness.get("/r")).status_code == 200
    finally:
        await harness.close()


async def test_a_stale_hit_a_fraction_of_a_second_past_its_lifetime_says_ttl_minus_1(
    cache: Harness,
) -> None:
    """RFC 9211 §2.4: ttl is negative once stale; 0.4 s past is -1, not 0 (int() truncated)."""
    cache.script("/f", Answer(headers={"cache-control": "max-age=1, stale-while-revalidate=30"}))
    await cache.get("/f")
    cache.clock.advance(1.4)
    assert status_of(await cache.get("/f")) == "tiercache; hit; ttl=-1; detail=hot"
