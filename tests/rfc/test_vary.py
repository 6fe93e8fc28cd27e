"""RFC 9111 §4.1: Vary selects among stored responses by request header values."""

from __future__ import annotations

from tests.rfc.origin import Answer, Harness, is_hit, status_of


def by_language(request: dict[str, str]) -> Answer:
    language = request.get("accept-language", "none")
    return Answer(
        headers={"cache-control": "max-age=100", "vary": "Accept-Language"},
        body=language.encode(),
    )


async def test_each_variant_is_stored_and_served_separately(cache: Harness) -> None:
    cache.script("/v", by_language)
    assert (await cache.get("/v", accept_language="en")).content == b"en"
    french = await cache.get("/v", accept_language="fr")
    assert french.content == b"fr"
    assert status_of(french) == "tiercache; fwd=vary-miss; stored"
    english = await cache.get("/v", accept_language="en")
    assert is_hit(english)
    assert english.content == b"en"
    assert is_hit(await cache.get("/v", accept_language="fr"))
    assert cache.origin.calls["/v"] == 2


async def test_vary_values_are_normalised(cache: Harness) -> None:
    """§4.1: values may be normalised (whitespace) before comparison."""
    cache.script("/n", by_language)
    await cache.get("/n", accept_language="en,  fr")
    assert is_hit(await cache.get("/n", accept_language="en, fr"))


async def test_absent_header_is_its_own_variant(cache: Harness) -> None:
    cache.script("/a", by_language)
    await cache.get("/a")
    assert not is_hit(await cache.get("/a", accept_language="en"))
    assert is_hit(await cache.get("/a"))


async def test_vary_star_is_never_reused(cache: Harness) -> None:
    """§4.1: Vary: * always fails to match."""
    cache.script("/s", Answer(headers={"cache-control": "max-age=100", "vary": "*"}))
    await cache.get("/s")
    assert not is_hit(await cache.get("/s"))
    assert cache.origin.calls["/s"] == 2
