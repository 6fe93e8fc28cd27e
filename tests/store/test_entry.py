"""Entry: what it derives instead of storing (the url tag, the size) must read back exactly
as given, through the codec too."""

from __future__ import annotations

import pytest

from tiercache_mw.store.codec import decode_entry, encode_entry
from tiercache_mw.store.entry import (
    ENTRY_OVERHEAD_BYTES,
    NO_EXTRA,
    RESPONSE_OVERHEAD_BYTES,
    Entry,
    Residency,
    StoredResponse,
    Tags,
    intern_headers,
)

RESIDENCY = Residency(None, None, None)
URL = "http://x/a?b=1"
VARIANT = f"{URL}\nvary\naccept-encoding: gzip"


@pytest.mark.parametrize(
    ("key", "tags"),
    [
        (URL, (("url", URL),)),
        (VARIANT, (("url", URL),)),
        (URL, (("type", "page"), ("surrogate", "s1"), ("url", URL))),
        (URL, (("url", "http://x/other"),)),  # a url that is not the key's: kept as given
        (URL, (("url", URL), ("type", "page"))),  # not last: kept as given, order and all
        ("k", (("url", "k"), ("url", "k"))),
        ("k", ()),
        ("k", (("type", "t"),)),
    ],
)
def test_tags_read_back_as_given(key: str, tags: Tags) -> None:
    entry = Entry(key, b"v", tags, RESIDENCY)
    assert entry.tags == tags
    assert decode_entry(encode_entry(entry, last_used=1.0)).tags == tags


def test_a_plain_url_tag_costs_no_object_per_entry() -> None:
    first = Entry("http://x/1", b"v", (("url", "http://x/1"),), RESIDENCY)
    second = Entry("http://x/2", b"v", (("url", "http://x/2"),), RESIDENCY)
    assert first._tags is second._tags
    assert second.tags == (("url", "http://x/2"),)


def test_size_is_derived_for_bytes_and_responses() -> None:
    response = StoredResponse(200, intern_headers([(b"x-a", b"1")]), b"body", response_time=1.0)
    assert Entry("r", response, (), RESIDENCY).size == response.payload_bytes + (
        RESPONSE_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES
    )
    assert Entry("b", b"12345", (), RESIDENCY).size == 5 + ENTRY_OVERHEAD_BYTES


def test_a_given_size_is_kept() -> None:
    entry = Entry("b", b"12345", (), RESIDENCY, 100)
    assert entry.size == 100
    assert Entry("v", {"a": 1}, (), RESIDENCY, 42).size == 42


def test_a_given_size_equal_to_the_derived_one_is_not_kept() -> None:
    entry = Entry("b", b"12345", (), RESIDENCY, 5 + ENTRY_OVERHEAD_BYTES)
    assert type(entry) is Entry  # no slot for a size: 8 B on every entry
    assert entry.size == 5 + ENTRY_OVERHEAD_BYTES


def test_a_value_that_cannot_say_its_size_needs_one() -> None:
    with pytest.raises(ValueError, match="needs a size"):
        Entry("v", {"a": 1}, (), RESIDENCY)


def test_decoded_sizes_are_recounted_for_bytes_and_kept_for_other_values() -> None:
    stale = Entry("b", b"12345", (), RESIDENCY, 99)  # as an older overhead constant wrote it
    assert decode_entry(encode_entry(stale, last_used=1.0)).size == 5 + ENTRY_OVERHEAD_BYTES
    value = Entry("v", [1, 2], (), RESIDENCY, 321)
    assert decode_entry(encode_entry(value, last_used=1.0)).size == 321


def test_an_entry_written_by_the_previous_release_still_reads() -> None:
    import msgpack

    # Format 1 as it was written before Entry stopped keeping created_at.
    old = msgpack.packb(
        [1, URL, 1, b"v", [["url", URL]], [None, 60.0, None], 731, 1.5, 2.5], use_bin_type=True
    )
    entry = decode_entry(old)
    assert (entry.key, entry.value, entry.tags) == (URL, b"v", (("url", URL),))
    assert (entry.residency.cold, entry.last_used, entry.size) == (
        60.0,
        2.5,
        1 + ENTRY_OVERHEAD_BYTES,
    )


def test_a_response_written_by_the_previous_release_still_reads() -> None:
    import msgpack

    # A response as format 1 has always laid it out: the in-memory layout changed, not this.
    wire = [203, [[b"content-type", b"text/plain"]], b"body", 4.0, 5.0, 60.0, 1.5, 5.0, 30.0,
            True, False, b'"e"', None, ["accept"], {"k": "v"}]  # fmt: skip
    old = msgpack.packb([1, URL, 2, wire, [["url", URL]], [None, 60.0, None], 0, 1.5, 2.5])
    response = decode_entry(old).value
    assert isinstance(response, StoredResponse)
    assert (response.status, response.headers, response.body) == (
        203,
        ((b"content-type", b"text/plain"),),
        b"body",
    )
    assert (response.response_time, response.freshness_lifetime, response.initial_age) == (
        5.0,
        60.0,
        1.5,
    )
    assert (response.stale_while_revalidate, response.stale_if_error) == (5.0, 30.0)
    assert (response.requires_validation, response.must_revalidate) == (True, False)
    assert (response.etag, response.last_modified, response.vary) == (b'"e"', None, ("accept",))
    assert response.extra == {"k": "v"}


def _response(**fields: object) -> StoredResponse:
    return StoredResponse(200, [(b"x-a", b"1")], b"body", response_time=5.0, **fields)  # type: ignore[arg-type]


def test_a_copy_by_replace_keeps_every_field_but_the_hit_memo() -> None:
    original = _response(
        freshness_lifetime=60.0, initial_age=1.5, stale_while_revalidate=5.0,
        stale_if_error=30.0, requires_validation=True, must_revalidate=True, etag=b'"e"',
        last_modified=b"Mon, 01 Jan 2024 00:00:00 GMT", vary=("accept",), extra={"k": "v"},
    )  # fmt: skip
    original.hit_memo = (0.0, 1.0, None, [], None)
    copy = original.replace(freshness_lifetime=0.0)
    assert copy.freshness_lifetime == 0.0
    assert copy.hit_memo is None
    kept = (
        "status", "initial_age", "stale_while_revalidate", "stale_if_error",
        "requires_validation", "must_revalidate", "etag", "last_modified", "vary", "extra",
        "response_time", "body", "headers",
    )  # fmt: skip
    assert {name: getattr(copy, name) for name in kept} == {
        name: getattr(original, name) for name in kept
    }
    assert original.replace(extra={"n": 1}).extra == {"n": 1}
    assert original.replace(status=203).status == 203
    with pytest.raises(TypeError, match="no field 'request_time'"):
        original.replace(request_time=1.0)


def test_responses_with_the_same_rules_share_them() -> None:
    first = _response(freshness_lifetime=float("3600"), stale_while_revalidate=5.0)
    second = _response(freshness_lifetime=float("3600"), stale_while_revalidate=5.0)
    assert first._policy is second._policy
    assert first.freshness_lifetime is second.freshness_lifetime
    assert _response(stale_while_revalidate=6.0).stale_while_revalidate == 6.0
    assert StoredResponse(404, [], b"", response_time=5.0).status == 404


def test_responses_with_extras_keep_their_own() -> None:
    first, second = _response(extra={"k": 1}), _response(extra={"k": 2})
    assert (first.extra, second.extra) == ({"k": 1}, {"k": 2})
    assert _response().extra is NO_EXTRA
    assert _response()._policy is _response()._policy


def test_headers_are_kept_as_a_tuple_with_shared_pairs() -> None:
    response = StoredResponse(200, [(b"x-a", b"1")], b"", response_time=5.0)
    assert response.headers == ((b"x-a", b"1"),)
    interned = intern_headers([(b"x-shared", b"yes")])
    assert interned == ((b"x-shared", b"yes"),)
    assert intern_headers([(b"x-shared", b"yes")])[0] is interned[0]


def test_initial_age_is_kept_to_the_millisecond_rounded_up_and_shared() -> None:
    first = _response(initial_age=0.0021234)
    second = _response(initial_age=0.0029)
    assert first.initial_age == 0.003
    assert first.initial_age is second.initial_age
    assert _response(initial_age=1.5).initial_age == 1.5
    assert _response(initial_age=float("inf")).initial_age == float("inf")
