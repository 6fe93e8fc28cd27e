"""RFC 9111 §4.4 invalidation by unsafe methods, and surrogate-key purges."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rfc.origin import Answer, Harness, is_hit

CACHED = Answer(headers={"cache-control": "max-age=100"})


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_unsafe_method_invalidates_the_target_uri(cache: Harness, method: str) -> None:
    cache.script("/doc", CACHED)
    await cache.get("/doc")
    assert is_hit(await cache.get("/doc"))
    response = await cache.request(method, "/doc")
    assert response.headers["cache-status"] == "tiercache; fwd=method"
    assert not is_hit(await cache.get("/doc"))


async def test_location_and_content_location_are_invalidated(cache: Harness) -> None:
    """§4.4: same-origin Location and Content-Location are invalidated too."""
    for path in ("/a", "/b", "/c"):
        cache.script(path, CACHED)
        await cache.get(path)
    cache.script(
        "/a",
        Answer(
            201,
            {"location": "/b", "content-location": "http://elsewhere.test/c"},
            b"created",
        ),
    )
    await cache.request("POST", "/a")
    assert not is_hit(await cache.get("/b"))
    cache.script("/c", CACHED)
    assert is_hit(await cache.get("/c")), "another origin's URL is left alone"


async def test_error_response_does_not_invalidate(cache: Harness) -> None:
    cache.script("/keep", CACHED)
    await cache.get("/keep")
    cache.script("/keep", Answer(500, {}, b"failed"))
    await cache.request("POST", "/keep")
    assert is_hit(await cache.get("/keep"))


async def test_surrogate_keys_tag_entries_for_purge(cache: Harness) -> None:
    cache.script(
        "/s1", Answer(headers={"cache-control": "max-age=100", "surrogate-key": "prod-1 all"})
    )
    cache.script("/s2", Answer(headers={"cache-control": "max-age=100", "cache-tag": "prod-2,all"}))
    first = await cache.get("/s1")
    assert "surrogate-key" not in first.headers, "stripped before the client sees it"
    await cache.get("/s2")
    assert await cache.cache.purge(tags={"surrogate-key": "prod-1"}) == 1
    assert not is_hit(await cache.get("/s1"))
    assert is_hit(await cache.get("/s2"))
    assert await cache.cache.purge(tags={"surrogate-key": "all"}) == 2


async def test_surrogate_keys_exposed_when_configured(tmp_path: Path) -> None:
    harness = Harness(tmp_path, http={"expose_surrogate_keys": True})
    try:
        harness.script("/k", Answer(headers={"cache-control": "max-age=9", "surrogate-key": "k"}))
        assert (await harness.get("/k")).headers["surrogate-key"] == "k"
    finally:
        await harness.close()


async def test_relative_content_location_is_resolved_against_the_target(cache: Harness) -> None:
    """§4.4: Location / Content-Location are URI references, resolved against the target."""
    for path in ("/dir/item", "/dir/other"):
        cache.script(path, CACHED)
        await cache.get(path)
    cache.script("/dir/item", Answer(200, {"content-location": "other"}, b"updated"))
    await cache.request("PUT", "/dir/item")
    assert not is_hit(await cache.get("/dir/other"))


async def test_safe_methods_do_not_invalidate(cache: Harness) -> None:
    cache.script("/safe", CACHED)
    await cache.get("/safe")
    await cache.request("OPTIONS", "/safe")
    assert is_hit(await cache.get("/safe"))


async def test_purge_by_url_removes_the_entry(cache: Harness) -> None:
    cache.script("/u", CACHED)
    await cache.get("/u?b=2&a=1")
    assert await cache.cache.purge(url="http://origin.test/u?a=1&b=2") >= 1
    assert not is_hit(await cache.get("/u?a=1&b=2"))


async def test_purge_by_surrogate_key_leaves_other_keys(cache: Harness) -> None:
    """Surrogate keys on several entries: a purge takes exactly the entries carrying one."""
    for n in range(3):
        cache.script(
            f"/p{n}",
            Answer(
                headers={"cache-control": "max-age=100", "surrogate-key": f"p{n} group-{n % 2}"}
            ),
        )
        await cache.get(f"/p{n}")
    assert await cache.cache.purge(tags={"surrogate-key": "group-0"}) == 2
    assert not is_hit(await cache.get("/p0"))
    assert is_hit(await cache.get("/p1"))
    assert not is_hit(await cache.get("/p2"))
