"""Conditional requests (RFC 9110 §13) and updating stored responses (RFC 9111 §3.2, §4.3)."""

from __future__ import annotations

import pytest

from tests.http.support import HTTP, NOW, date, hdrs, stored
from tiercache_mw.http.conditional import (
    Precondition,
    evaluate_preconditions,
    freshen,
    not_modified,
    not_modified_headers,
    validation_headers,
    validator_matches,
)
from tiercache_mw.http.headers import get_header
from tiercache_mw.http.response import StorePolicy

LM = date(-3600)


@pytest.mark.parametrize(
    ("etag", "request_fields", "expect"),
    [
        ('"v1"', {"if_none_match": '"v1"'}, True),  # §13.1.2
        ('"v1"', {"if_none_match": 'W/"v1"'}, True),  # weak comparison
        ('W/"v1"', {"if_none_match": '"v1"'}, True),
        ('"v1"', {"if_none_match": '"a", "v1"'}, True),
        ('"v1"', {"if_none_match": '"v2"'}, False),
        ('"v1"', {"if_none_match": "*"}, True),
        (None, {"if_none_match": "*"}, True),
        (None, {"if_none_match": '"v1"'}, False),
        (None, {"if_modified_since": LM}, True),  # §13.1.3: not modified since
        (None, {"if_modified_since": date(-7200)}, False),
        (None, {"if_modified_since": "garbage"}, False),
        ('"v1"', {"if_none_match": '"v2"', "if_modified_since": LM}, False),  # §13.2.2: INM first
        ('"v1"', {}, False),
    ],
)
def test_not_modified(etag: str | None, request_fields: dict[str, str], expect: bool) -> None:
    fields = {"cache_control": "max-age=60", "last_modified": LM}
    if etag is not None:
        fields["etag"] = etag
    assert not_modified(hdrs(**request_fields), stored(200, fields)) is expect


EARLY = date(-7200)
SEND, NOT_MODIFIED, FAILED, ASK_APP = (
    Precondition.SEND, Precondition.NOT_MODIFIED, Precondition.FAILED, Precondition.ASK_APP,
)  # fmt: skip


@pytest.mark.parametrize(
    ("stored_fields", "request_fields", "expect"),
    [
        ({"etag": '"v1"'}, {}, SEND),
        ({"etag": '"v1"'}, {"if_match": '"v1"'}, SEND),  # §13.1.1, strong comparison
        ({"etag": '"v1"'}, {"if_match": '"x", "v1"'}, SEND),
        ({"etag": '"v1"'}, {"if_match": '"x"'}, FAILED),
        ({"etag": '"v1"'}, {"if_match": 'W/"v1"'}, FAILED),
        ({"etag": 'W/"v1"'}, {"if_match": '"v1"'}, FAILED),
        ({"etag": 'W/"v1"'}, {"if_match": "*"}, SEND),
        ({}, {"if_match": '"v1"'}, FAILED),  # no ETag to match, as at the origin
        ({}, {"if_match": "*"}, SEND),
        ({"last_modified": LM}, {"if_unmodified_since": LM}, SEND),  # §13.1.4
        ({"last_modified": LM}, {"if_unmodified_since": EARLY}, FAILED),
        ({"last_modified": LM}, {"if_unmodified_since": "garbage"}, SEND),
        ({"etag": '"v1"'}, {"if_unmodified_since": LM}, ASK_APP),
        ({"etag": '"v1"'}, {"if_unmodified_since": "garbage"}, SEND),
        # §13.2.2: If-Match first, If-Unmodified-Since only without it, then the 304 tests
        (
            {"etag": '"v1"', "last_modified": LM},
            {"if_match": '"v1"', "if_unmodified_since": EARLY},
            SEND,
        ),
        ({"etag": '"v1"'}, {"if_match": '"v1"', "if_unmodified_since": LM}, SEND),
        ({"etag": '"v1"'}, {"if_match": '"x"', "if_none_match": '"v1"'}, FAILED),
        ({"etag": '"v1"'}, {"if_match": '"v1"', "if_none_match": '"v1"'}, NOT_MODIFIED),
        ({"last_modified": LM}, {"if_unmodified_since": LM, "if_modified_since": LM}, NOT_MODIFIED),
        ({"etag": '"v1"'}, {"if_range": '"x"', "range": "bytes=0-1"}, SEND),  # §13.1.5
    ],
)  # fmt: skip
def test_evaluate_preconditions(
    stored_fields: dict[str, str], request_fields: dict[str, str], expect: Precondition
) -> None:
    response = stored(200, {"cache_control": "max-age=60", **stored_fields})
    assert evaluate_preconditions(hdrs(**request_fields), response) is expect


def test_preconditions_ignored_for_non_2xx() -> None:
    """RFC 9110 §13.2.1: no 412 (or 304) instead of a stored 404."""
    response = stored(404, cache_control="max-age=60", etag='"x"')
    assert evaluate_preconditions(hdrs(if_match='"y"'), response) is SEND


def test_conditions_ignored_for_non_2xx() -> None:
    """RFC 9110 §13.2.1: a 404 is sent as is, whatever the conditions."""
    response = stored(404, cache_control="max-age=60", etag='"x"')
    assert not not_modified(hdrs(if_none_match='"x"'), response)


def test_304_carries_the_fields_of_rfc_9110_15_4_5() -> None:
    response = stored(
        cache_control="max-age=60", etag='"e"', content_type="text/plain", vary="accept",
        expires=date(60), content_location="/x", date=date(), last_modified=LM,
    )  # fmt: skip
    names = {name for name, _ in not_modified_headers(response)}
    assert names == {
        b"cache-control", b"etag", b"vary", b"expires", b"content-location", b"date",
        b"last-modified",
    }  # fmt: skip


def test_validation_headers_send_both_validators() -> None:
    """RFC 9111 §4.3.1."""
    response = stored(etag='"e"', last_modified=LM)
    assert validation_headers(response) == [
        (b"if-none-match", b'"e"'),
        (b"if-modified-since", LM.encode()),
    ]
    assert validation_headers(stored()) == []


@pytest.mark.parametrize(
    ("stored_fields", "fields", "expect"),
    [
        ({"etag": '"a"'}, {"etag": '"a"'}, True),  # §4.3.4: strong validator
        ({"etag": '"a"'}, {"etag": '"b"'}, False),
        ({"etag": 'W/"a"'}, {"etag": '"a"'}, False),  # a strong one needs a strong match
        ({"etag": '"a"'}, {"etag": 'W/"a"'}, True),  # weak validator: weak comparison
        ({}, {"etag": '"a"'}, False),
        ({"last_modified": LM}, {"last_modified": LM}, True),
        ({"last_modified": LM}, {"last_modified": date(-1)}, False),
        ({"etag": '"a"'}, {}, True),  # no validator: the one entry we asked about
        ({"etag": '"a"', "content_length": "4"}, {"etag": '"a"', "content_length": "9"}, False),
        ({"etag": '"a"', "content_length": "4"}, {"etag": '"a"', "content_length": "0"}, True),
    ],
)
def test_validator_matches(
    stored_fields: dict[str, str], fields: dict[str, str], expect: bool
) -> None:
    assert validator_matches(stored(200, stored_fields), hdrs(**fields)) is expect


def test_freshen_updates_headers_and_freshness() -> None:
    """RFC 9111 §3.2: the 304's fields replace the stored ones, except Content-Length."""
    old = stored(cache_control="max-age=10", etag='"a"', x_version="1", content_length="4")
    update = hdrs(cache_control="max-age=100", etag='"a"', x_version="2", content_length="0",
                  connection="close", age="5")  # fmt: skip
    new = freshen(
        old, update, request_time=NOW + 50, response_time=NOW + 50,
        policy=StorePolicy(HTTP),
    )  # fmt: skip
    assert get_header(new.headers, b"x-version") == b"2"
    assert get_header(new.headers, b"content-length") == b"4"
    assert get_header(new.headers, b"connection") is None
    assert get_header(new.headers, b"age") is None
    assert new.freshness_lifetime == 100
    assert new.initial_age == 5
    assert new.response_time == NOW + 50
    assert new.body == old.body


def test_freshen_dates_a_304_without_date_when_it_arrives() -> None:
    """The stored Date is the first response's: a 304 without Date is dated on arrival
    (RFC 9110 §6.6.1), and its age counts from then, not from the first response."""
    old = stored(200, {"date": date(-100)}, cache_control="max-age=10", etag='"a"', at=NOW - 100)
    new = freshen(
        old, hdrs(etag='"a"'), request_time=NOW, response_time=NOW, policy=StorePolicy(HTTP)
    )
    assert [value for name, value in new.headers if name == b"date"] == [date().encode()]
    assert new.initial_age == 0


def test_freshen_adds_no_date_to_a_response_stored_without_one() -> None:
    """The server dates what it sends; the merged response stays undated, its age counted
    from the 304's arrival."""
    old = stored(200, {}, cache_control="max-age=10", etag='"a"', at=NOW - 100)
    new = freshen(
        old, hdrs(etag='"a"'), request_time=NOW, response_time=NOW, policy=StorePolicy(HTTP)
    )
    assert b"date" not in {name for name, _ in new.headers}
    assert new.initial_age == 0


def test_freshen_takes_the_304s_date() -> None:
    old = stored(cache_control="max-age=10", etag='"a"', at=NOW - 100)
    update = hdrs(etag='"a"', date=date(-3))
    new = freshen(old, update, request_time=NOW, response_time=NOW, policy=StorePolicy(HTTP))
    assert [value for name, value in new.headers if name == b"date"] == [date(-3).encode()]
    assert new.initial_age == 3


def test_freshen_keeps_stored_cache_control_when_the_304_has_none() -> None:
    old = stored(cache_control="max-age=10, must-revalidate", etag='"a"')
    update = hdrs(etag='"a"')
    new = freshen(
        old, update, request_time=NOW, response_time=NOW + 30,
        policy=StorePolicy(HTTP),
    )  # fmt: skip
    assert new.freshness_lifetime == 10
    assert new.must_revalidate
