"""Freshness lifetime and age (RFC 9111 §4.2). Times are wall-clock seconds (time.time())."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from werkzeug.http import parse_date

from tiercache_mw.http.cache_control import DELTA_SECONDS_MAX, ResponseCacheControl
from tiercache_mw.http.headers import Headers, get_all, get_header

if TYPE_CHECKING:
    from tiercache_mw.store.entry import StoredResponse

__all__ = [
    "HEURISTICALLY_CACHEABLE",
    "current_age",
    "explicit_lifetime",
    "heuristic_lifetime",
    "http_timestamp",
    "initial_age",
]

# RFC 9110 §15.1: status codes defined as heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})


@functools.lru_cache(maxsize=1024)
def _timestamp(value: bytes) -> float | None:
    parsed = parse_date(value.decode("latin-1"))
    return parsed.timestamp() if parsed is not None else None


def http_timestamp(value: bytes | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as a POSIX timestamp; None when absent or invalid."""
    if value is None:
        return None
    return _timestamp(value.strip())


def _date(headers: Headers, response_time: float) -> float:
    """The Date value, or the time the response arrived when absent (RFC 9111 §4.2.1)."""
    date = http_timestamp(get_header(headers, b"date"))
    return response_time if date is None else date


def explicit_lifetime(
    headers: Headers, cc: ResponseCacheControl, *, response_time: float
) -> float | None:
    """The freshness lifetime the response assigns itself, or None when it assigns none.

    RFC 9111 §4.2.1, for a shared cache: s-maxage, then max-age, then Expires - Date. A
    duplicated or invalid max-age/s-maxage makes the response stale (0). Expires that does not
    parse ("0", "-1") means already expired (§5.3), as do several differing Expires lines
    (§4.2.1). A targeted field (RFC 9213 §2.2) replaces Expires as well as Cache-Control.
    """
    if cc.invalid_freshness:
        return 0.0
    if cc.s_maxage is not None:
        return float(cc.s_maxage)
    if cc.max_age is not None:
        return float(cc.max_age)
    if cc.targeted:
        return None
    expires_lines = get_all(headers, b"expires")
    if not expires_lines:
        return None
    if len(set(expires_lines)) > 1:
        return 0.0
    expires = http_timestamp(expires_lines[0])
    if expires is None:
        return 0.0
    return max(0.0, expires - _date(headers, response_time))


def heuristic_lifetime(
    status: int,
    headers: Headers,
    cc: ResponseCacheControl,
    *,
    response_time: float,
    fraction: float,
    max_seconds: float,
) -> float:
    """RFC 9111 §4.2.2: a fraction (typically 10 %) of the time since Last-Modified, capped,
    for heuristically cacheable status codes or responses marked `public`."""
    if status not in HEURISTICALLY_CACHEABLE and not cc.public:
        return 0.0
    last_modified = http_timestamp(get_header(headers, b"last-modified"))
    if last_modified is None:
        return 0.0
    since = _date(headers, response_time) - last_modified
    if since <= 0:
        return 0.0
    return min(since * fraction, max_seconds)


def _age_value(headers: Headers) -> float:
    """RFC 9111 §5.1: Age as delta-seconds; an invalid value is ignored."""
    raw = get_header(headers, b"age")
    if raw is None:
        return 0.0
    text = raw.split(b",")[0].strip()
    if not text.isdigit():
        return 0.0
    return float(min(int(text), DELTA_SECONDS_MAX))


def initial_age(headers: Headers, *, request_time: float, response_time: float) -> float:
    """corrected_initial_age of RFC 9111 §4.2.3: the larger of the apparent age (response_time
    - Date) and the Age the upstream sent plus the time the request spent in flight."""
    date = http_timestamp(get_header(headers, b"date"))
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = _age_value(headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(stored: StoredResponse, now: float) -> float:
    """RFC 9111 §4.2.3: corrected_initial_age + resident_time."""
    return stored.initial_age + (now - stored.response_time)
