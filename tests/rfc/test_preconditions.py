"""RFC 9110 §13.2.2: every precondition evaluated, in order, when answering from the cache."""

from __future__ import annotations

import pytest

from tests.rfc.origin import Answer, Harness, is_hit, status_of

LAST_MODIFIED = "Mon, 13 Nov 2023 21:13:20 GMT"  # an hour before origin.START
EARLIER = "Mon, 13 Nov 2023 20:13:20 GMT"
LATER = "Mon, 13 Nov 2023 22:13:20 GMT"


def stored_answer(etag: str = '"v1"', **more: str) -> Answer:
    return Answer(
        headers={"cache-control": "max-age=100", "etag": etag, "last-modified": LAST_MODIFIED,
                 **more},
        body=b"body v1",
    )  # fmt: skip


async def primed(cache: Harness, path: str, answer: Answer) -> None:
    cache.script(path, answer)
    await cache.get(path)


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({"if_match": '"v1"'}, 200),  # §13.1.1: strong match
        ({"if_match": '"a", "v1"'}, 200),
        ({"if_match": "*"}, 200),
        ({"if_match": '"v2"'}, 412),
        ({"if_match": 'W/"v1"'}, 412),  # If-Match never matches a weak tag
        ({"if_unmodified_since": LAST_MODIFIED}, 200),  # §13.1.4: not modified since
        ({"if_unmodified_since": LATER}, 200),
        ({"if_unmodified_since": EARLIER}, 412),
        ({"if_unmodified_since": "garbage"}, 200),  # an invalid date is ignored
        # §13.2.2 step 2: If-Unmodified-Since only without If-Match
        ({"if_match": '"v1"', "if_unmodified_since": EARLIER}, 200),
        # §13.2.2 order: the 412 comes before If-None-Match's 304
        ({"if_match": '"v2"', "if_none_match": '"v1"'}, 412),
        ({"if_unmodified_since": EARLIER, "if_none_match": '"v1"'}, 412),
        ({"if_match": '"v1"', "if_none_match": '"v1"'}, 304),
        ({"if_unmodified_since": LATER, "if_modified_since": LAST_MODIFIED}, 304),
        # §13.1.5: a false If-Range asks for the whole response, which is what the cache sends
        ({"range": "bytes=0-3", "if_range": '"v0"'}, 200),
    ],
)
async def test_preconditions_answered_from_the_cache(
    cache: Harness, fields: dict[str, str], expect: int
) -> None:
    await primed(cache, "/p", stored_answer())
    response = await cache.get("/p", **fields)
    assert response.status_code == expect
    assert is_hit(response)
    assert response.content == (b"body v1" if expect == 200 else b"")
    assert cache.origin.calls["/p"] == 1


async def test_if_match_against_a_weak_stored_etag_fails(cache: Harness) -> None:
    """§13.1.1 uses the strong comparison: a stored W/ tag never matches, as at the origin."""
    await primed(cache, "/weak", stored_answer(etag='W/"v1"'))
    assert (await cache.get("/weak", if_match='W/"v1"')).status_code == 412
    assert (await cache.get("/weak", if_match="*")).status_code == 200


async def test_head_gets_the_412_too(cache: Harness) -> None:
    await primed(cache, "/h", stored_answer())
    response = await cache.request("HEAD", "/h", if_match='"v2"')
    assert response.status_code == 412
    assert cache.origin.calls["/h"] == 1


async def test_conditions_do_not_apply_to_a_stored_error(cache: Harness) -> None:
    """§13.2.1: preconditions are ignored when the answer would not be 2xx."""
    await primed(cache, "/gone", Answer(410, {"cache-control": "max-age=100", "etag": '"g"'}))
    response = await cache.get("/gone", if_match='"other"')
    assert response.status_code == 410
    assert is_hit(response)


async def test_if_unmodified_since_without_a_stored_date_asks_the_app(cache: Harness) -> None:
    """Without Last-Modified the cache cannot evaluate §13.1.4; the app does, and its 412
    reaches the client while the stored entry stays."""
    await primed(cache, "/nolm", Answer(headers={"cache-control": "max-age=100", "etag": '"n"'}))
    cache.script("/nolm", Answer(412, {}, b""))
    refused = await cache.get("/nolm", if_unmodified_since=EARLIER)
    assert refused.status_code == 412
    assert status_of(refused).startswith("tiercache; fwd=request; fwd-status=412")
    assert cache.origin.seen[-1]["if-unmodified-since"] == EARLIER
    assert cache.origin.seen[-1]["if-none-match"] == '"n"', "validated on the way"
    assert is_hit(await cache.get("/nolm"))
    assert cache.origin.calls["/nolm"] == 2


async def test_only_if_cached_never_asks_the_app_to_evaluate(cache: Harness) -> None:
    """§5.2.1.7 wins: the stored response is sent, If-Unmodified-Since unevaluated."""
    await primed(cache, "/oic", Answer(headers={"cache-control": "max-age=100", "etag": '"n"'}))
    response = await cache.get("/oic", if_unmodified_since=EARLIER, cache_control="only-if-cached")
    assert response.status_code == 200
    assert is_hit(response)
    assert cache.origin.calls["/oic"] == 1
