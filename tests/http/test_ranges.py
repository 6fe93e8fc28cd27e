"""Range (RFC 9110 §14) and If-Range (§13.1.5) against a stored response, without I/O."""

from __future__ import annotations

import pytest

from tests.http.support import HTTP, NOW, date, hdrs
from tiercache_mw.http.cache_control import response_cache_control
from tiercache_mw.http.conditional import if_range_holds
from tiercache_mw.http.headers import get_header
from tiercache_mw.http.ranges import answer_range
from tiercache_mw.http.response import StorePolicy, build_stored_response
from tiercache_mw.store.entry import StoredResponse

BODY = b"0123456789"
LM = date(-3600)


def stored(status: int = 200, body: bytes = BODY, /, **fields: str) -> StoredResponse:
    headers = hdrs(**fields)
    return build_stored_response(
        status,
        headers,
        body,
        request_time=NOW,
        response_time=NOW,
        cc=response_cache_control(headers, targeted_field=HTTP.targeted_cache_control),
        policy=StorePolicy(HTTP),
    )


@pytest.mark.parametrize(
    ("range_value", "expect"),
    [
        ("bytes=0-0", (206, "bytes 0-0/10", b"0")),
        ("bytes=5-", (206, "bytes 5-9/10", b"56789")),
        ("bytes=-1", (206, "bytes 9-9/10", b"9")),
        ("bytes=-10", (206, "bytes 0-9/10", BODY)),
        ("bytes=-11", (206, "bytes 0-9/10", BODY)),  # §14.1.3: werkzeug alone says 416
        ("bytes=3-99", (206, "bytes 3-9/10", b"3456789")),
        ("BYTES=3-4", (206, "bytes 3-4/10", b"34")),
        ("bytes=10-", (416, "bytes */10", b"")),
        ("bytes=10-10", (416, "bytes */10", b"")),
        ("bytes=-0", None),  # werkzeug refuses it; ignoring Range is always allowed
        ("bytes=4-3", None),
        ("bytes=0-1,3-4", None),  # several ranges: the whole response
        ("lines=0-1", None),
        ("0-1", None),
        ("", None),
    ],
)
def test_answer_range(range_value: str, expect: tuple[int, str, bytes] | None) -> None:
    answer = answer_range(hdrs(range=range_value), stored(content_length="10", etag='"e"'))
    if expect is None:
        assert answer is None
        return
    assert answer is not None
    status, content_range, body = expect
    assert (answer.status, answer.body) == (status, body)
    assert get_header(answer.headers, b"content-range") == content_range.encode()
    lengths = [value for name, value in answer.headers if name == b"content-length"]
    assert lengths == [str(len(body)).encode()]
    if status == 206:
        assert get_header(answer.headers, b"etag") == b'"e"'


def test_no_range_field_means_no_answer() -> None:
    assert answer_range(hdrs(if_range='"e"'), stored(etag='"e"')) is None


@pytest.mark.parametrize(
    ("status", "body", "fields"),
    [
        (404, BODY, {}),  # Range only turns a 200 into a part (§14.2)
        (203, BODY, {}),
        (200, b"", {}),  # an empty body has no byte to point at
        (200, BODY, {"content_range": "bytes 0-9/20"}),  # itself a part
        (200, BODY, {"content_length": "20"}),  # bytes missing: not held whole
    ],
)
def test_only_a_whole_200_is_cut(status: int, body: bytes, fields: dict[str, str]) -> None:
    assert answer_range(hdrs(range="bytes=0-1"), stored(status, body, **fields)) is None


@pytest.mark.parametrize(
    ("fields", "if_range", "expect"),
    [
        ({"etag": '"v1"'}, '"v1"', True),  # §13.1.5: strong comparison
        ({"etag": '"v1"'}, ' "v1" ', True),
        ({"etag": '"v1"'}, '"v2"', False),
        ({"etag": '"v1"'}, 'W/"v1"', False),  # weak never matches
        ({"etag": 'W/"v1"'}, 'W/"v1"', False),
        ({"etag": 'W/"v1"'}, '"v1"', False),
        ({}, '"v1"', False),  # nothing to match
        ({"etag": '"v1"'}, '"v1", "v2"', False),  # one entity-tag, not a list
        ({"last_modified": LM, "date": date()}, LM, True),  # exact and strong (§8.8.2.2)
        ({"last_modified": LM, "date": date()}, date(-3599), False),  # later: still false
        ({"last_modified": LM, "date": date()}, date(-3601), False),
        ({"last_modified": LM, "date": date(-3600)}, LM, False),  # Date = LM: weak
        ({"last_modified": LM, "date": date(-3599)}, LM, True),  # a second later: strong
        ({"last_modified": LM}, LM, True),  # no Date: the arrival time stands in (§6.6.1)
        ({"date": date()}, LM, False),  # no Last-Modified
        ({"last_modified": LM, "date": date()}, "yesterday", False),
    ],
)
def test_if_range_holds(fields: dict[str, str], if_range: str, expect: bool) -> None:
    assert if_range_holds(if_range.encode(), stored(**fields)) is expect


def test_false_if_range_sends_the_whole() -> None:
    response = stored(etag='"v1"')
    assert answer_range(hdrs(range="bytes=0-1", if_range='"v1"'), response) is not None
    assert answer_range(hdrs(range="bytes=0-1", if_range='"v0"'), response) is None
