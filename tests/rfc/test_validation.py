"""RFC 9111 §4.3 validation and RFC 9110 §13 conditional requests, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rfc.origin import Answer, Harness, is_hit, status_of, wsgi_client
from tiercache_mw.wsgi import StartResponse, WSGIEnviron


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


async def test_304_to_a_no_store_request_is_served_but_not_stored(cache: Harness) -> None:
    """§5.2.1.5: a no-store request's 304 freshens the answer it gets, not the stored entry."""
    cache.script("/ns", versioned("1"))
    await cache.get("/ns")
    cache.clock.advance(20)
    cache.script(
        "/ns", Answer(304, {"cache-control": "max-age=100", "etag": '"v1"', "x-version": "2"})
    )
    answered = await cache.get("/ns", cache_control="no-store")
    assert answered.status_code == 200
    assert answered.headers["x-version"] == "2"
    cache.script("/ns", versioned("3"))
    later = await cache.get("/ns")  # still the stale v1 entry: validated again, not a hit
    assert not is_hit(later)
    assert later.headers["x-version"] == "3"
    assert cache.origin.calls["/ns"] == 3


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


def _changed_behind_an_ims_only_check(request: dict[str, str]) -> Answer:
    """An origin that answers 304 to any condition, though its representation changed."""
    if "if-none-match" in request or "if-modified-since" in request:
        return Answer(304, {"cache-control": "max-age=100", "etag": '"v2"'})
    return Answer(headers={"cache-control": "max-age=100", "etag": '"v2"'}, body=b"body v2")


@pytest.mark.parametrize("client_fields", [{}, {"if_none_match": '"v1"'}])
async def test_304_for_another_representation_is_retried_unconditionally(
    cache: Harness, client_fields: dict[str, str]
) -> None:
    """§4.3.4: a 304 whose ETag is not the stored one selects nothing and updates nothing;
    the client (here without a condition that the new representation meets) gets the
    representation the app has now, from a retry without the cache's validators."""
    cache.script("/r", versioned("1"))
    await cache.get("/r")
    cache.clock.advance(20)
    cache.script("/r", _changed_behind_an_ims_only_check)
    response = await cache.get("/r", **client_fields)
    assert response.status_code == 200
    assert response.content == b"body v2"
    assert response.headers["etag"] == '"v2"'
    assert status_of(response) == "tiercache; fwd=stale; fwd-status=200; stored"
    assert cache.origin.seen[-2]["if-none-match"] == '"v1"'
    assert "if-none-match" not in cache.origin.seen[-1]
    assert cache.origin.calls["/r"] == 3
    again = await cache.get("/r")
    assert is_hit(again)
    assert again.content == b"body v2"


async def test_head_validation_answered_for_another_representation_is_retried(
    cache: Harness,
) -> None:
    cache.script("/rh", versioned("1"))
    await cache.get("/rh")
    cache.clock.advance(20)
    cache.script("/rh", _changed_behind_an_ims_only_check)
    head = await cache.request("HEAD", "/rh")
    assert head.status_code == 200
    assert head.headers["etag"] == '"v2"'
    assert "if-none-match" not in cache.origin.seen[-1]
    assert not is_hit(await cache.get("/rh")), "the stored GET is another representation"


async def test_304_to_a_request_without_conditions_is_a_502(cache: Harness) -> None:
    """§4.3.3: a client that sent no condition never gets a 304; one to a request that
    carried none is an invalid answer from the app (Varnish fails the fetch as well)."""
    cache.script("/bad", Answer(304, {"cache-control": "max-age=100", "etag": '"x"'}))
    response = await cache.get("/bad")
    assert response.status_code == 502
    assert status_of(response) == "tiercache; fwd=uri-miss; fwd-status=304"
    assert not is_hit(await cache.get("/bad"))


async def test_invalid_304_serves_stale_if_error_allows(cache: Harness) -> None:
    cache.script("/sie", Answer(headers={"cache-control": "max-age=10, stale-if-error=60"}))
    await cache.get("/sie")
    cache.clock.advance(20)
    cache.script("/sie", Answer(304, {"etag": '"x"'}))
    response = await cache.get("/sie")
    assert response.status_code == 200
    assert response.content == b"hello"
    assert status_of(response) == ("tiercache; fwd=stale; fwd-status=304; detail=stale-if-error")


async def test_304_to_the_clients_own_condition_reaches_it_but_updates_nothing(
    cache: Harness,
) -> None:
    """A stored response without validators is not validated by the cache: the client's own
    If-None-Match goes to the app. Its 304 answers the client, but names a representation
    the stored one cannot be shown to be (§4.3.4), so the entry stays stale."""
    cache.script("/own304", Answer(headers={"cache-control": "max-age=10"}))
    await cache.get("/own304")
    cache.clock.advance(20)
    cache.script("/own304", Answer(304, {"cache-control": "max-age=100", "etag": '"c"'}))
    response = await cache.get("/own304", if_none_match='"c"')
    assert response.status_code == 304
    assert cache.origin.seen[-1]["if-none-match"] == '"c"'
    cache.script("/own304", Answer(headers={"cache-control": "max-age=100"}, body=b"new"))
    after = await cache.get("/own304")
    assert not is_hit(after)
    assert after.content == b"new"


def test_wsgi_retries_a_304_for_another_representation(tmp_path: Path) -> None:
    """The WSGI adapter follows the same §4.3.4 retry as the ASGI one."""
    asked: list[str | None] = []

    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        asked.append(environ.get("HTTP_IF_NONE_MATCH"))
        if len(asked) == 1:  # stored, and stale at once: the next request validates
            start_response("200 OK", [("cache-control", "max-age=0"), ("etag", '"v1"')])
            return [b"body v1"]
        if asked[-1] is not None:
            start_response("304 Not Modified", [("etag", '"v2"')])
            return []
        start_response("200 OK", [("cache-control", "max-age=100"), ("etag", '"v2"')])
        return [b"body v2"]

    with wsgi_client(app, tmp_path) as client:
        client.get("/w")
        response = client.get("/w")
        assert response.status_code == 200
        assert response.get_data() == b"body v2"
        assert asked == [None, '"v1"', None]
        assert client.get("/w").headers["cache-status"].startswith("tiercache; hit;")
