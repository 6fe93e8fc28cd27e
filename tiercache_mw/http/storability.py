"""May a response be stored? (RFC 9111 §3, as a shared cache)."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from tiercache_mw.http.cache_control import RequestCacheControl, ResponseCacheControl
from tiercache_mw.http.freshness import HEURISTICALLY_CACHEABLE
from tiercache_mw.http.headers import Headers, get_header, get_list, split_list

__all__ = ["REQUEST_AUTHORIZED", "UNDERSTOOD_STATUSES", "StoreVerdict", "decide_store"]

# Final status codes whose semantics this cache knows (RFC 9111 §3, §5.2.2.3). 206 and 304 are
# left out on purpose: a partial response is never stored here (§3.3 allows it, but ranges are
# not combined), and a 304 only ever updates a stored response (§4.3.4).
UNDERSTOOD_STATUSES = frozenset(s.value for s in HTTPStatus if s.value >= 200) - {206, 304}


@dataclass(frozen=True, slots=True)
class StoreVerdict:
    store: bool
    reason: str  # why not, in a word (or "ok")


_OK = StoreVerdict(True, "ok")
# A refusal that lies in the request alone (§3.5), not in the response, which another
# request could have stored (the request's no-store is the other; updates check it first).
REQUEST_AUTHORIZED = "authorization"


def _no(reason: str) -> StoreVerdict:
    return StoreVerdict(False, reason)


def _set_cookie_dropped(cc: ResponseCacheControl) -> bool:
    """A qualified private/no-cache naming Set-Cookie lets the rest be stored without it."""
    return "set-cookie" in cc.private_fields or "set-cookie" in cc.no_cache_fields


def decide_store(
    method: str,
    status: int,
    request_headers: Headers,
    headers: Headers,
    cc: ResponseCacheControl,
    *,
    req_cc: RequestCacheControl,
    store_set_cookie: bool,
    has_freshness: bool,
) -> StoreVerdict:
    """RFC 9111 §3: a shared cache stores a response only when

    - the method is cacheable and understood (GET; a HEAD response only updates, §4.3.5);
    - the status is final (RFC 9110 §15: 200-599); with must-understand it must also be one
      this cache understands (§5.2.2.3); an unknown status without it is stored like any
      other, which the last rule limits to explicit freshness or `public` (§3);
      206 is not stored (no range support) and 304 never replaces a response;
    - no-store is absent from request and response (§5.2.1.5, §5.2.2.5), unless the response
      has must-understand with an understood status (§5.2.2.3);
    - private is absent (unqualified; §5.2.2.7);
    - a request with Authorization is answered with must-revalidate, public or s-maxage (§3.5);
    - Set-Cookie is absent, unless configured or the response names it in private/no-cache
      (a local choice, as Varnish and most CDNs make it);
    - Vary is not "*" (it could never be reused, §4.1);
    - it has explicit freshness, `public`, or a heuristically cacheable status (§3), and,
      to be worth storing at all, some freshness or a validator (`has_freshness`).
    """
    if method != "GET":
        return _no("method")
    if status == 206 or get_header(headers, b"content-range") is not None:
        return _no("partial")
    if status == 304 or not 200 <= status <= 599:
        return _no("status")  # a 304 only updates (§4.3.4); the rest is not a final status
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return _no("status")
    elif cc.no_store:
        return _no("no-store")
    if req_cc.no_store:
        return _no("request-no-store")
    if cc.private:
        return _no("private")
    if get_header(request_headers, b"authorization") is not None and not (
        cc.must_revalidate or cc.public or cc.s_maxage is not None
    ):
        return _no(REQUEST_AUTHORIZED)
    if (
        not store_set_cookie
        and get_header(headers, b"set-cookie") is not None
        and not _set_cookie_dropped(cc)
    ):
        return _no("set-cookie")
    vary = get_list(headers, b"vary")
    if vary is not None and "*" in split_list(vary):
        return _no("vary-star")
    if not (cc.has_explicit_freshness or cc.public or status in HEURISTICALLY_CACHEABLE
            or (get_header(headers, b"expires") is not None and not cc.targeted)):  # fmt: skip
        return _no("not-cacheable")
    if not has_freshness:
        return _no("no-freshness")
    return _OK
