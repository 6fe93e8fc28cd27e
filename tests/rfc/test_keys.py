"""The cache key (RFC 9111 §2, §4): what makes two requests the same resource here.

The normalisation choices are written down in docs/http-semantics.md.
"""

from __future__ import annotations

from tests.rfc.origin import Answer, Harness, is_hit

CACHED = Answer(headers={"cache-control": "max-age=100"})


async def test_query_parameter_order_shares_one_entry(cache: Harness) -> None:
    cache.script("/q", CACHED)
    await cache.get("/q?b=2&a=1")
    assert is_hit(await cache.get("/q?a=1&b=2"))
    assert cache.origin.calls["/q"] == 1


async def test_repeated_parameter_order_is_kept(cache: Harness) -> None:
    """?a=1&a=2 and ?a=2&a=1 may mean different lists: not folded together."""
    cache.script("/r", CACHED)
    await cache.get("/r?a=1&a=2")
    assert not is_hit(await cache.get("/r?a=2&a=1"))


async def test_different_queries_are_different_resources(cache: Harness) -> None:
    cache.script("/d", CACHED)
    await cache.get("/d?page=1")
    assert not is_hit(await cache.get("/d?page=2"))
    assert not is_hit(await cache.get("/d"))


async def test_host_case_and_default_port_are_folded(cache: Harness) -> None:
    """RFC 9110 §4.2.3: scheme and host are case-insensitive; :80 is http's default port."""
    cache.script("/h", CACHED)
    await cache.get("/h")
    assert is_hit(await cache.get("/h", host="ORIGIN.test:80"))


async def test_the_host_is_part_of_the_key(cache: Harness) -> None:
    cache.script("/h2", CACHED)
    await cache.get("/h2", host="a.test")
    assert not is_hit(await cache.get("/h2", host="b.test"))


async def test_head_and_get_share_a_key(cache: Harness) -> None:
    cache.script("/hg", CACHED)
    await cache.get("/hg")
    assert is_hit(await cache.request("HEAD", "/hg"))
