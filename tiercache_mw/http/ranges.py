"""Range requests answered from a stored response (RFC 9110 §14, RFC 9111 §3.3, §4).

Only a GET for a stored, whole 200 is answered with part of it (§14.2: Range is defined for
GET only, and applies where the answer would be 200); a single byte range gives a 206 with
Content-Range (§15.3.7), a range past the end a 416 (§15.5.17). Everything else, several
ranges included, gets the whole response, which §14.2 always allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from werkzeug.datastructures import ContentRange, Range
from werkzeug.http import parse_range_header

from tiercache_mw.http.conditional import if_range_holds
from tiercache_mw.http.headers import Headers, get_header, get_list

if TYPE_CHECKING:
    from tiercache_mw.store.entry import StoredResponse

__all__ = ["RangeAnswer", "answer_range"]

_BYTES = "bytes"
# Replaced on a part: the stored Content-Length is the whole body's (§15.3.7.1).
_REPLACED_ON_A_PART = frozenset({b"content-length", b"content-range"})


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """A 206 or 416 from a stored response; the caller adds Age and Cache-Status."""

    status: int
    headers: Headers
    body: bytes


def answer_range(request_headers: Headers, stored: StoredResponse) -> RangeAnswer | None:
    """The 206 or 416 this GET's Range asks of `stored`, or None to send it whole.

    Called once the request's other preconditions let `stored` be sent (RFC 9110 §13.2.2
    step 5). Range is ignored when If-Range is false (§13.1.5), when it cannot be parsed
    or names another unit (§14.2), and when `stored` is not a 200 whose body we hold whole:
    a response that is itself partial, or whose Content-Length says bytes are missing.
    """
    # Most requests carry no Range: one scan says so, without building a list.
    if get_header(request_headers, b"range") is None:
        return None
    if stored.status != 200 or not _held_whole(stored):
        return None
    range_value = get_list(request_headers, b"range")
    assert range_value is not None
    if_range = get_list(request_headers, b"if-range")
    if if_range is not None and not if_range_holds(if_range, stored):
        return None
    requested = _single_byte_range(range_value)
    length = len(stored.body)
    if requested is None or length == 0:
        return None  # an empty body has no byte to point at: sent whole
    span = _within(requested, length)
    if span is None:
        content_range = ContentRange(_BYTES, None, None, length).to_header()
        headers = [(b"content-range", content_range.encode()), (b"content-length", b"0")]
        return RangeAnswer(416, headers, b"")
    start, stop = span
    content_range = ContentRange(_BYTES, start, stop, length).to_header()
    headers = [(name, value) for name, value in stored.headers if name not in _REPLACED_ON_A_PART]
    headers += [
        (b"content-range", content_range.encode()),
        (b"content-length", str(stop - start).encode()),
    ]
    return RangeAnswer(206, headers, stored.body[start:stop])


def _single_byte_range(range_value: bytes) -> Range | None:
    """Range parsed, if it asks for one byte range; None when it is to be ignored (§14.2).

    Several ranges are ignored rather than sent as multipart/byteranges (§14.2 lets a server
    ignore Range; werkzeug has no writer for it; Varnish too serves single ranges only): the
    clients that ask for ranges (media players, resumed downloads) ask for one.
    """
    text = range_value.decode("latin-1")
    parsed = parse_range_header(text)
    if parsed is None or parsed.units != _BYTES or len(parsed.ranges) != 1:
        return None
    if parsed.ranges[0] == (0, None) and text.partition("=")[2].strip(" \t").startswith("-"):
        # "-0" asks for no byte at all; werkzeug before 3.1.9 reads it as "0-", the whole body.
        return None
    return parsed


def _within(requested: Range, length: int) -> tuple[int, int] | None:
    """(start, stop) of the bytes `requested` selects, None when it starts past the end
    (unsatisfiable, §14.1.1)."""
    start = requested.ranges[0][0]
    if start < -length:
        # A suffix longer than the body is the whole body (§14.1.3); werkzeug's
        # range_for_length calls it unsatisfiable.
        requested = Range(_BYTES, [(0, None)])
    return requested.range_for_length(length)


def _held_whole(stored: StoredResponse) -> bool:
    if get_header(stored.headers, b"content-range") is not None:
        return False  # a 200 carrying Content-Range is a part: never cut it again
    declared = get_header(stored.headers, b"content-length")
    return declared is None or declared.strip() == str(len(stored.body)).encode()
