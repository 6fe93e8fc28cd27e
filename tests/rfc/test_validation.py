"""RFC 9111 §4.3 validation and RFC 9110 §13 conditional requests, end to end."""

from __future__ import annotations

from tests.rfc.origin import Answer, Harness, is_hit, status_of


def versioned(version: str, max_age: int = 10) -> Answer:
    return Answer(
        headers={
            "cache-control": f"max-age={max_age}",
            "etag": '"v1"',
            "x-version": version,
        },
        body=b"body v1",
    )


async def test_conditional_request_answered_304_from_cache(cache: Harness) -> None:
    """RFC 9110 §13.1.2: If-None-Match matching the stored ETag → 304 without the app."""
    cache.script("/c", versioned("1", max_age=100))
    await cache.get("/c")
    response = await cache.get("/c", if_none_match='"v1"')
    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"v1"'
    assert is_hit(response)
    assert cache.origin.calls["/c"] == 1


async def test_weak_comparison_for_if_none_match(cache: Harness) -> None:
    """RFC 9110 §13.1.2: If-None-Match uses the weak comparison: W/"v1" matches "v1"."""
    cache.script("/w", versioned("1", max_age=100))
    await cache.get("/w")
    assert (await cache.get("/w", if_none_match='W/"v1"')).status_code == 304
    assert (await cache.get("/w", if_none_match='"other"')).status_code == 200


async def test_if_modified_since_answered_from_cache(cache: Harness) -> None:
    """RFC 9110 §13.1.3: If-Modified-Since at or after Last-Modified → 304."""
    last_modified = cache.clock.date(-3600)
    cache.script(
        "/m", Answer(headers={"cache-control": "max-age=100", "last-modified": last_modified})
    )
    await cache.get("/m")
    assert (await cache.get("/m", if_modified_since=last_modified)).status_code == 304
    assert (await cache.get("/m", if_modified_since=cache.clock.date(-7200))).status_code == 200


async def test_stale_entry_revalidated_with_304_updates_headers(cache: Harness) -> None:
    """§4.3.1 sends the stored validators; §4.3.4 a 304 freshens the entry and its headers."""
    cache.script("/v", versioned("1"))
    await cache.get("/v")
    cache.clock.advance(20)

    def not_modified(request: dict[str, str]) -> Answer:
        assert request["if-none-match"] == '"v1"'
        return Answer(304, {"cache-control": "max-age=100", "etag": '"v1"', "x-version": "2"})

    cache.script("/v", not_modified)
    revalidated = await cache.get("/v")
    assert revalidated.status_code == 200
    assert revalidated.content == b"body v1"
    assert revalidated.headers["x-version"] == "2"
    assert status_of(revalidated).startswith("tiercache; fwd=stale; fwd-status=304")
    cache.clock.advance(50)
    fresh = await cache.get("/v")
    assert is_hit(fresh)
    assert fresh.headers["x-version"] == "2"
    assert cache.origin.calls["/v"] == 2


async def test_stale_entry_replaced_by_a_new_200(cache: Harness) -> None:
    cache.script("/n", versioned("1"))
    await cache.get("/n")
    cache.clock.advance(20)
    cache.script("/n", Answer(headers={"cache-control": "max-age=10", "etag": '"v2"'}, body=b"v2"))
    replaced = await cache.get("/n")
    assert replaced.content == b"v2"
    assert "fwd=stale; fwd-status=200; stored" in status_of(replaced)
    assert is_hit(await cache.get("/n"))


async def test_head_response_updates_the_stored_get(cache: Harness) -> None:
    """§4.3.5: a HEAD response with matching validators freshens the stored GET response."""
    cache.script("/hd", versioned("1"))
    await cache.get("/hd")
    cache.clock.advance(20)
    cache.script("/hd", versioned("3", max_age=100))
    head = await cache.client.head("/hd")
    assert head.status_code == 200
    get = await cache.get("/hd")
    assert is_hit(get)
    assert get.headers["x-version"] == "3"
    assert get.content == b"body v1"


async def test_no_cache_response_is_validated_every_time(cache: Harness) -> None:
    """§5.2.2.4: no-cache responses may be stored but need validation before each use."""
    cache.script("/nc", Answer(headers={"cache-control": "no-cache", "etag": '"n"'}))
    await cache.get("/nc")
    cache.script("/nc", Answer(304, {"etag": '"n"'}))
    second = await cache.get("/nc")
    assert second.content == b"hello"
    assert "fwd-status=304" in status_of(second)
    assert cache.origin.calls["/nc"] == 2


async def test_head_with_a_changed_validator_makes_the_get_stale(cache: Harness) -> None:
    """§4.3.5: a HEAD whose validators differ means the stored GET response is outdated."""
    cache.script("/hc", versioned("1", max_age=100))
    await cache.get("/hc")
    cache.script(
        "/hc",
        Answer(headers={"cache-control": "max-age=100", "etag": '"v2"'}, body=b"body v2"),
    )
    await cache.request("HEAD", "/hc", cache_control="no-cache")
    after = await cache.get("/hc")
    assert not is_hit(after)
    assert after.content == b"body v2"


async def test_head_is_answered_from_the_stored_get(cache: Harness) -> None:
    """§4.3.5 / RFC 9110 §9.3.2: a HEAD reuses the GET response, without its body."""
    cache.script("/hg", versioned("1", max_age=100))
    await cache.get("/hg")
    head = await cache.request("HEAD", "/hg")
    assert is_hit(head)
    assert head.content == b""
    assert head.headers["content-length"] == str(len(b"body v1"))
    assert cache.origin.calls["/hg"] == 1


async def test_client_conditions_are_not_forwarded_on_validation(cache: Harness) -> None:
    """§4.3.1: the cache validates with its own stored validators, not the client's."""
    cache.script("/own", versioned("1"))
    await cache.get("/own")
    cache.clock.advance(20)
    cache.script("/own", Answer(304, {"etag": '"v1"', "cache-control": "max-age=100"}))
    response = await cache.get("/own", if_none_match='"client"')
    assert cache.origin.seen[-1]["if-none-match"] == '"v1"'
    assert response.status_code == 200, "the client's tag does not match the stored one"


async def test_revalidated_entry_answers_a_conditional_with_304(cache: Harness) -> None:
    """RFC 9110 §13.1.2 after §4.3.4: the freshened entry answers the client's condition."""
    cache.script("/c304", versioned("1"))
    await cache.get("/c304")
    cache.clock.advance(20)
    cache.script("/c304", Answer(304, {"etag": '"v1"', "cache-control": "max-age=100"}))
    response = await cache.get("/c304", if_none_match='"v1"')
    assert response.status_code == 304
    assert "fwd=stale; fwd-status=304" in status_of(response)


async def test_last_modified_only_entry_is_revalidated_with_if_modified_since(
    cache: Harness,
) -> None:
    """§4.3.1: without an ETag the cache sends If-Modified-Since with Last-Modified."""
    last_modified = cache.clock.date(-3600)
    cache.script(
        "/lm", Answer(headers={"cache-control": "max-age=10", "last-modified": last_modified})
    )
    await cache.get("/lm")
    cache.clock.advance(20)
    cache.script("/lm", Answer(304, {"cache-control": "max-age=100"}))
    response = await cache.get("/lm")
    assert cache.origin.seen[-1]["if-modified-since"] == last_modified
    assert response.content == b"hello"
    assert is_hit(await cache.get("/lm"))
