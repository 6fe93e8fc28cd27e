"""Conditional requests (RFC 9110 §13) answered from the cache, validation with the app
(RFC 9111 §4.3) and updating a stored response from a 304 or a HEAD (§3.2, §4.3.4, §4.3.5)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from werkzeug.http import parse_etags, unquote_etag

from tiercache_mw.http.cache_control import response_cache_control
from tiercache_mw.http.freshness import http_timestamp
from tiercache_mw.http.headers import HOP_BY_HOP, Headers, get_header, get_list
from tiercache_mw.http.response import (
    OWNED_FIELDS,
    SURROGATE_FIELDS,
    StorePolicy,
    build_stored_response,
    date_field,
)

if TYPE_CHECKING:
    from tiercache_mw.store.entry import StoredResponse

__all__ = [
    "Precondition",
    "evaluate_preconditions",
    "freshen",
    "if_range_holds",
    "not_modified",
    "not_modified_headers",
    "validation_headers",
    "validator_matches",
    "weak_match",
]

# RFC 9110 §13.1: the fields §13.2.2 evaluates before Range (If-Range is `if_range_holds`).
_PRECONDITION_FIELDS = frozenset(
    {b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since"}
)
# RFC 9110 §15.4.5: what a 304 carries (plus Last-Modified, which helps caches downstream),
# and an upstream's Cache-Status, kept before ours as on the 200 (RFC 9211 §2).
_NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary",
     b"last-modified", b"cache-status"}
)  # fmt: skip
# RFC 9111 §3.2: fields a 304/HEAD never updates: Content-Length, the framing the stored body
# depends on, hop-by-hop fields, and the ones the cache owns or strips (an upstream
# Cache-Status in the update replaces the stored one, like any other field).
_NOT_UPDATED = (
    frozenset({b"content-length", b"content-encoding", b"content-range"})
    | HOP_BY_HOP
    | OWNED_FIELDS
    | SURROGATE_FIELDS
)


def _opaque(etag: bytes | str) -> tuple[str, bool]:
    text = etag.decode("latin-1") if isinstance(etag, bytes) else etag
    tag, weak = unquote_etag(text.strip())
    return tag or "", weak


def weak_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison: the opaque tags are equal, W/ ignored."""
    return _opaque(a)[0] == _opaque(b)[0]


def strong_match(a: bytes, b: bytes) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: both strong and equal."""
    tag_a, weak_a = _opaque(a)
    tag_b, weak_b = _opaque(b)
    return not weak_a and not weak_b and tag_a == tag_b


def validation_headers(stored: StoredResponse) -> Headers:
    """The validators to send when validating `stored` (RFC 9111 §4.3.1)."""
    headers: Headers = []
    if stored.etag is not None:
        headers.append((b"if-none-match", stored.etag))
    if stored.last_modified is not None:
        headers.append((b"if-modified-since", stored.last_modified))
    return headers


def validator_matches(stored: StoredResponse, headers: Headers) -> bool:
    """Does a 304 or HEAD response describe `stored`? (RFC 9111 §4.3.4, §4.3.5)

    A strong ETag must match strongly, a weak one weakly; else Last-Modified must be equal.
    A response with no validator at all matches: we sent this entry's own validators, so it
    is the only candidate (§4.3.4's single-stored-response case). A differing Content-Length
    means another representation (§4.3.5).
    """
    length = get_header(headers, b"content-length")
    # "0" is skipped: some servers frame a 304 with Content-Length: 0 (RFC 9110 §8.6).
    if length is not None and length.strip() != b"0":
        stored_length = get_header(stored.headers, b"content-length")
        if stored_length is not None and stored_length.strip() != length.strip():
            return False
    etag = get_header(headers, b"etag")
    if etag is not None:
        if stored.etag is None:
            return False
        if _opaque(etag)[1]:
            return weak_match(etag, stored.etag)
        return strong_match(etag, stored.etag)
    last_modified = get_header(headers, b"last-modified")
    if last_modified is not None:
        if stored.last_modified is None:
            return False
        return http_timestamp(last_modified) == http_timestamp(stored.last_modified)
    return True


def not_modified(request_headers: Headers, stored: StoredResponse) -> bool:
    """Answer this GET/HEAD with 304 instead of the stored 2xx? (RFC 9110 §13.2.2)

    If-None-Match (§13.1.2) uses the weak comparison and, when present, If-Modified-Since is
    ignored; If-Modified-Since (§13.1.3) compares with the stored Last-Modified.
    """
    if not 200 <= stored.status < 300:
        return False  # §13.2.1: conditions only apply to a 2xx answer
    return _none_match_or_not_modified_since(request_headers, stored)


def _none_match_or_not_modified_since(request_headers: Headers, stored: StoredResponse) -> bool:
    inm = get_list(request_headers, b"if-none-match")
    if inm is not None:
        if stored.etag is None:
            return inm.strip() == b"*"
        etags = parse_etags(inm.decode("latin-1"))
        if etags.star_tag:
            return True
        return etags.contains_weak(_opaque(stored.etag)[0])
    ims = get_header(request_headers, b"if-modified-since")
    if ims is None or stored.last_modified is None:
        return False
    since = http_timestamp(ims)
    modified = http_timestamp(stored.last_modified)
    return since is not None and modified is not None and modified <= since


class Precondition(enum.Enum):
    """What a request's conditions make of a stored response (RFC 9110 §13.2.2)."""

    SEND = "send"  # no condition, or all true: send the stored response
    NOT_MODIFIED = "not-modified"  # 304
    FAILED = "failed"  # 412
    ASK_APP = "ask-app"  # the stored response lacks what If-Unmodified-Since needs


def evaluate_preconditions(request_headers: Headers, stored: StoredResponse) -> Precondition:
    """RFC 9110 §13.2.2's order for a GET or HEAD answered from `stored`:

    1. If-Match (§13.1.1): strong comparison, "*" true; false → 412. No stored ETag is false,
       as at the origin, which has none to match either (ATS answers the same).
    2. Else If-Unmodified-Since (§13.1.4): a Last-Modified after the date → 412; an invalid
       date is ignored; with no stored Last-Modified the app, which may know the date, decides.
    3. If-None-Match (§13.1.2), weak comparison: matching → 304.
    4. Else If-Modified-Since (§13.1.3): not modified since → 304.
    5. If-Range (§13.1.5) only says whether Range applies: `if_range_holds`, read by
       `tiercache_mw.http.ranges` once these conditions let the stored response be sent.
    Conditions only apply when the answer would be 2xx (§13.2.1).
    """
    if not 200 <= stored.status < 300:
        return Precondition.SEND
    # Most requests carry no condition: one pass over the fields says so.
    if not any(name in _PRECONDITION_FIELDS for name, _ in request_headers):
        return Precondition.SEND
    if_match = get_list(request_headers, b"if-match")
    if if_match is not None:
        if not _strong_member(if_match, stored.etag):
            return Precondition.FAILED
    else:
        ius = get_header(request_headers, b"if-unmodified-since")
        since = http_timestamp(ius) if ius is not None else None
        if since is not None:
            if stored.last_modified is None:
                return Precondition.ASK_APP
            modified = http_timestamp(stored.last_modified)
            if modified is None:
                return Precondition.ASK_APP
            if modified > since:
                return Precondition.FAILED
    if _none_match_or_not_modified_since(request_headers, stored):
        return Precondition.NOT_MODIFIED
    return Precondition.SEND


def _strong_member(if_match: bytes, etag: bytes | None) -> bool:
    """If-Match's test (RFC 9110 §13.1.1): "*", or `etag` strongly equal to a listed tag."""
    if if_match.strip() == b"*":
        return True  # a stored response is a current representation
    if etag is None:
        return False
    tag, weak = _opaque(etag)
    return not weak and parse_etags(if_match.decode("latin-1")).contains(tag)


def if_range_holds(if_range: bytes, stored: StoredResponse) -> bool:
    """Does If-Range let Range apply to `stored`? (RFC 9110 §13.1.5)

    An entity-tag must match the stored ETag by the strong comparison (a weak tag never
    does). An HTTP-date must equal the stored Last-Modified, and that must be strong
    (§8.8.2.2): the stored Date at least a second later, the time the response arrived
    standing in for a missing Date (§6.6.1). Anything else is false: the whole response.
    werkzeug's `parse_if_range_header` drops W/ and its `is_resource_modified` takes any
    earlier Last-Modified, both weaker than §13.1.5, so the two tests are written here.
    """
    value = if_range.strip()
    if value[:1] == b'"' or value[:2] == b"W/":
        return stored.etag is not None and strong_match(value, stored.etag)
    since = http_timestamp(value)
    modified = http_timestamp(stored.last_modified)
    if since is None or modified is None or since != modified:
        return False
    date = http_timestamp(get_header(stored.headers, b"date"))
    return (stored.response_time if date is None else date) >= modified + 1


def not_modified_headers(stored: StoredResponse) -> Headers:
    """The stored fields a 304 carries (RFC 9110 §15.4.5)."""
    return [(name, value) for name, value in stored.headers if name in _NOT_MODIFIED_FIELDS]


def freshen(
    stored: StoredResponse,
    headers: Headers,
    *,
    request_time: float,
    response_time: float,
    policy: StorePolicy,
) -> StoredResponse:
    """`stored` updated from a 304 or HEAD response (RFC 9111 §3.2, §4.3.4, §4.3.5).

    Every field of the new response replaces the stored field of that name, except those
    §3.2 excludes (Content-Length, framing, hop-by-hop); freshness and age are recomputed from
    the merged header set and the new response's Date/Age. The body is kept.
    """
    incoming = [(name, value) for name, value in headers if name not in _NOT_UPDATED]
    replaced = {name for name, _ in incoming}
    if b"date" not in replaced and get_header(stored.headers, b"date") is not None:
        # The stored Date is the first response's: kept, it would count the time the entry
        # sat in the cache into the new age. A 304 without one is dated when it arrived
        # (RFC 9110 §6.6.1), to the second below, so its age is never undercounted.
        incoming.append(date_field(int(response_time)))
        replaced.add(b"date")
    merged = [(name, value) for name, value in stored.headers if name not in replaced]
    merged += incoming
    age = get_header(headers, b"age")
    timing = merged if age is None else [*merged, (b"age", age)]
    # From the merged set: a 304 may omit Cache-Control, and the stored one then holds.
    merged_cc = response_cache_control(timing, targeted_field=policy.http.targeted_cache_control)
    updated = build_stored_response(
        stored.status,
        timing,
        stored.body,
        request_time=request_time,
        response_time=response_time,
        cc=merged_cc,
        policy=policy,
    )
    return updated.replace(extra=stored.extra)  # read-only, so shared as it is
