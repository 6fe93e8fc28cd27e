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


async def test_vary_value_case_is_folded_for_language_tags(cache: Harness) -> None:
    """§4.1 allows normalising values whose case carries no meaning (RFC 5646 §2.1.1)."""
    cache.script("/case", by_language)
    await cache.get("/case", accept_language="en-US")
    assert is_hit(await cache.get("/case", accept_language="en-us"))


async def test_accept_encoding_member_order_is_ignored(cache: Harness) -> None:
    def by_encoding(request: dict[str, str]) -> Answer:
        return Answer(headers={"cache-control": "max-age=100", "vary": "Accept-Encoding"})

    cache.script("/enc", by_encoding)
    await cache.get("/enc", accept_encoding="gzip, br")
    assert is_hit(await cache.get("/enc", accept_encoding="br,gzip"))
    assert not is_hit(await cache.get("/enc", accept_encoding="gzip"))


async def test_vary_on_two_fields_needs_both_to_match(cache: Harness) -> None:
    def by_two(request: dict[str, str]) -> Answer:
        return Answer(headers={"cache-control": "max-age=100", "vary": "Accept, Accept-Language"})

    cache.script("/two", by_two)
    await cache.get("/two", accept="text/html", accept_language="en")
    assert is_hit(await cache.get("/two", accept="text/html", accept_language="en"))
    assert not is_hit(await cache.get("/two", accept="text/html", accept_language="fr"))
    assert not is_hit(await cache.get("/two", accept="text/plain", accept_language="en"))


async def test_unsafe_request_invalidates_every_variant(cache: Harness) -> None:
    """RFC 9111 §4.4 names the URI: all the responses stored for it go."""
    cache.script("/all", by_language)
    await cache.get("/all", accept_language="en")
    await cache.get("/all", accept_language="fr")
    await cache.request("POST", "/all")
    assert not is_hit(await cache.get("/all", accept_language="en"))
    assert not is_hit(await cache.get("/all", accept_language="fr"))
