"""A stored response updated from a 304 or a HEAD (RFC 9111 §3.2, §4.3.4, §4.3.5): what the
merged fields say decides, as for any response, whether it may stay stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.rfc.origin import Answer, Harness, is_hit, status_of, wsgi_client
from tiercache_mw.wsgi import StartResponse, WSGIEnviron

PAGE = {"cache-control": "max-age=10", "etag": '"v1"', "content-type": "text/plain"}


def page_or_304(extra: dict[str, str]) -> Callable[[dict[str, str]], Answer]:
    """The page, or a 304 carrying `extra` when asked with the cache's validators."""

    def answer(request: dict[str, str]) -> Answer:
        if request.get("if-none-match") == '"v1"':
            return Answer(304, {"etag": '"v1"', **extra})
        return Answer(headers=PAGE, body=b"page")

    return answer


UNSTORABLE_304_FIELDS = [
    pytest.param({"set-cookie": "session=ALICE; HttpOnly"}, id="set-cookie"),
    pytest.param({"cache-control": "private, max-age=60"}, id="private"),
    pytest.param({"cache-control": "no-store"}, id="no-store"),
]


@pytest.mark.parametrize("authorization", [None, "Bearer alice"], ids=["anonymous", "authorized"])
@pytest.mark.parametrize("extra", UNSTORABLE_304_FIELDS)
async def test_304_making_the_response_unstorable_is_sent_but_not_stored(
    cache: Harness, extra: dict[str, str], authorization: str | None
) -> None:
    """§3, §5.2.2.7: the response a 304 updated is stored again only if it may be stored;
    a request with Authorization (§3.5, checked first) does not keep it stored either."""
    cache.script("/p", page_or_304(extra))
    await cache.get("/p")
    cache.clock.advance(20)
    fields = {"cookie": "session=ALICE"}
    if authorization is not None:
        fields["authorization"] = authorization
    alice = await cache.get("/p", **fields)
    assert alice.status_code == 200
    assert alice.content == b"page"
    assert status_of(alice) == "tiercache; fwd=stale; fwd-status=304"
    for name, value in extra.items():
        assert alice.headers[name] == value  # her own Set-Cookie, the new Cache-Control
    bob = await cache.get("/p")
    assert status_of(bob) == "tiercache; fwd=uri-miss; stored"  # the entry is gone
    assert "set-cookie" not in bob.headers
    assert bob.headers["cache-control"] == "max-age=10"
    assert cache.origin.calls["/p"] == 3


@pytest.mark.parametrize("directive", ['no-cache="Set-Cookie"', 'private="Set-Cookie"'])
async def test_304_set_cookie_named_by_a_qualified_directive_reaches_its_client(
    cache: Harness, directive: str
) -> None:
    """§5.2.2.4, §5.2.2.7: the qualified directive keeps Set-Cookie out of the stored copy,
    which stays stored; the client whose request brought the 304 still gets its cookie."""
    cache.script(
        "/q",
        page_or_304({"cache-control": f"max-age=10, {directive}", "set-cookie": "s=ALICE"}),
    )
    await cache.get("/q")
    cache.clock.advance(20)
    alice = await cache.get("/q")
    assert status_of(alice) == "tiercache; fwd=stale; fwd-status=304"
    assert alice.headers.get_list("set-cookie") == ["s=ALICE"]
    bob = await cache.get("/q")
    assert is_hit(bob)
    assert "set-cookie" not in bob.headers


async def test_a_refresh_304_to_a_conditional_client_carries_its_qualified_cookie(
    cache: Harness,
) -> None:
    """The client's own If-None-Match matches the refreshed entry: the cache answers 304, and
    that 304 carries the Set-Cookie the app sent on its 304 to this request."""
    cache.script(
        "/c",
        page_or_304({"cache-control": 'max-age=10, private="Set-Cookie"', "set-cookie": "s=A"}),
    )
    await cache.get("/c")
    cache.clock.advance(20)
    alice = await cache.get("/c", if_none_match='"v1"')
    assert alice.status_code == 304
    assert status_of(alice) == "tiercache; fwd=stale; fwd-status=304"
    assert alice.headers.get_list("set-cookie") == ["s=A"]
    bob = await cache.get("/c", if_none_match='"v1"')
    assert (bob.status_code, is_hit(bob)) == (304, True)
    assert "set-cookie" not in bob.headers


async def test_304_to_a_request_with_authorization_leaves_the_shared_entry_as_it_was(
    cache: Harness,
) -> None:
    """§3.5: a response to a request with Authorization is stored only with public,
    s-maxage or must-revalidate; the merged response of a 304 has none of them here, so the
    update is not stored. The entry an anonymous request stored stays: the next anonymous
    request revalidates it (a 304, no body from the app) rather than missing."""
    cache.script("/a", page_or_304({"cache-control": "max-age=60"}))
    await cache.get("/a")
    cache.clock.advance(20)
    authorised = await cache.get("/a", authorization="Bearer alice")
    assert authorised.content == b"page"
    assert status_of(authorised) == "tiercache; fwd=stale; fwd-status=304"
    anonymous = await cache.get("/a")
    assert anonymous.content == b"page"
    assert status_of(anonymous) == "tiercache; fwd=stale; fwd-status=304"
    assert is_hit(await cache.get("/a"))
    assert cache.origin.calls["/a"] == 3


async def test_304_with_public_to_a_request_with_authorization_is_stored(
    cache: Harness,
) -> None:
    cache.script("/a", page_or_304({"cache-control": "public, max-age=60"}))
    await cache.get("/a")
    cache.clock.advance(20)
    await cache.get("/a", authorization="Bearer alice")
    assert is_hit(await cache.get("/a"))
    assert cache.origin.calls["/a"] == 2


async def test_304_set_cookie_removes_only_its_own_variant(cache: Harness) -> None:
    """A Vary'd URL keeps each variant under its own key: only the one updated goes."""

    def answer(request: dict[str, str]) -> Answer:
        if request.get("if-none-match") == '"v1"':
            return Answer(304, {"etag": '"v1"', "set-cookie": "session=ALICE"})
        language = request.get("accept-language", "")
        return Answer(headers={**PAGE, "vary": "Accept-Language"}, body=language.encode())

    cache.script("/v", answer)
    await cache.get("/v", accept_language="fr")
    cache.clock.advance(20)
    await cache.get("/v", accept_language="de")  # stored 20 s later: still fresh below
    french = await cache.get("/v", accept_language="fr")
    assert french.headers["set-cookie"] == "session=ALICE"
    assert status_of(await cache.get("/v", accept_language="fr")).endswith("stored")
    german = await cache.get("/v", accept_language="de")
    assert is_hit(german)
    assert german.content == b"de"


async def test_head_update_with_set_cookie_removes_the_stored_get(cache: Harness) -> None:
    """§4.3.5: a HEAD response updates the stored GET; with Set-Cookie it may not be stored,
    so the GET is not kept with the cookie (nor kept as it was)."""

    def answer(request: dict[str, str]) -> Answer:
        extra = {"set-cookie": "session=CAROL"} if request[":method"] == "HEAD" else {}
        return Answer(headers={**PAGE, "cache-control": "max-age=60", **extra}, body=b"page")

    cache.script("/h", answer)
    await cache.get("/h")
    carol = await cache.request("HEAD", "/h", cache_control="no-cache")
    assert carol.headers["set-cookie"] == "session=CAROL"
    dave = await cache.get("/h")
    assert "set-cookie" not in dave.headers
    assert status_of(dave) == "tiercache; fwd=uri-miss; stored"


async def test_storable_304_still_freshens_the_entry(cache: Harness) -> None:
    """The check does not stop an ordinary 304 from updating the entry."""
    cache.script("/f", page_or_304({"cache-control": "max-age=100", "x-new": "1"}))
    await cache.get("/f")
    cache.clock.advance(20)
    await cache.get("/f")
    later = await cache.get("/f")
    assert is_hit(later)
    assert later.headers["x-new"] == "1"
    assert cache.origin.calls["/f"] == 2


def test_wsgi_304_with_set_cookie_is_not_stored(tmp_path: Path) -> None:
    """The WSGI adapter removes the entry too (on its own thread, without an event loop)."""
    calls: list[str | None] = []

    def app(environ: WSGIEnviron, start_response: StartResponse) -> list[bytes]:
        calls.append(environ.get("HTTP_IF_NONE_MATCH"))
        if environ.get("HTTP_IF_NONE_MATCH") == '"v1"':
            start_response("304 Not Modified", [("etag", '"v1"'), ("set-cookie", "s=ALICE")])
            return []
        # max-age=0: stored, and stale at once, so the next request validates.
        start_response("200 OK", [("cache-control", "max-age=0"), ("etag", '"v1"')])
        return [b"page"]

    with wsgi_client(app, tmp_path) as client:
        client.get("/w")
        alice = client.get("/w")
        assert alice.headers["set-cookie"] == "s=ALICE"
        assert alice.get_data() == b"page"
        bob = client.get("/w")
        assert "set-cookie" not in bob.headers
        assert bob.headers["cache-status"] == "tiercache; fwd=uri-miss; stored"
        assert calls == [None, '"v1"', None]


def tagged_page(request: dict[str, str]) -> Answer:
    """A page with a surrogate key and a validator, and a 304 without the key."""
    if request.get("if-none-match") == '"v1"':
        return Answer(304, {"etag": '"v1"', "cache-control": "max-age=10"})
    return Answer(headers={**PAGE, "surrogate-key": "prod-1"}, body=b"page")


async def test_304_keeps_the_entrys_surrogate_key_tags(cache: Harness) -> None:
    """The 304 does not repeat Surrogate-Key: purging the key still finds the entry."""
    cache.script("/t", tagged_page)
    await cache.get("/t")
    cache.clock.advance(20)
    await cache.get("/t")  # freshened by a 304
    assert is_hit(await cache.get("/t"))
    await cache.cache.purge(tags={"surrogate-key": "prod-1"})
    assert status_of(await cache.get("/t")) == "tiercache; fwd=uri-miss; stored"
    assert cache.origin.calls["/t"] == 3


async def test_head_update_keeps_the_entrys_surrogate_key_tags(cache: Harness) -> None:
    cache.script("/t", tagged_page)
    await cache.get("/t")
    cache.script("/t", Answer(headers={**PAGE, "x-head": "1"}, body=b"page"))  # without the key
    await cache.request("HEAD", "/t", cache_control="no-cache")
    assert is_hit(hit := await cache.get("/t"))
    assert hit.headers["x-head"] == "1"
    await cache.cache.purge(tags={"surrogate-key": "prod-1"})
    assert status_of(await cache.get("/t")) == "tiercache; fwd=uri-miss; stored"


async def test_304_adds_the_surrogate_keys_it_carries(cache: Harness) -> None:
    def answer(request: dict[str, str]) -> Answer:
        if request.get("if-none-match") == '"v1"':
            return Answer(304, {"etag": '"v1"', "surrogate-key": "prod-1 sale"})
        return Answer(headers={**PAGE, "surrogate-key": "prod-1"}, body=b"page")

    cache.script("/t", answer)
    await cache.get("/t")
    cache.clock.advance(20)
    await cache.get("/t")
    await cache.cache.purge(tags={"surrogate-key": "sale"})
    assert status_of(await cache.get("/t")) == "tiercache; fwd=uri-miss; stored"


async def test_304_keeps_the_ttl_rule_its_surrogate_key_selected(tmp_path: Path) -> None:
    """The rule is chosen from the entry's tags: a 304 without the key keeps the rule's TTL."""
    harness = Harness(
        tmp_path, ttl_rules=[{"tag": {"surrogate-key": "prod-1"}, "ttl_seconds": 300}]
    )
    try:

        def answer(request: dict[str, str]) -> Answer:
            if request.get("if-none-match") == '"v1"':
                return Answer(304, {"etag": '"v1"'})
            return Answer(headers={"etag": '"v1"', "surrogate-key": "prod-1"}, body=b"page")

        harness.script("/r", answer)
        await harness.get("/r")
        harness.clock.advance(400)
        await harness.get("/r")  # the 304: fresh for the rule's 300 s again
        harness.clock.advance(100)
        hit = await harness.get("/r")
        assert is_hit(hit)
        assert status_of(hit) == "tiercache; hit; ttl=200; detail=hot"
        assert harness.origin.calls["/r"] == 2
    finally:
        await harness.close()
