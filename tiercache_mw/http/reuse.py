"""May a stored response answer this request, and how? (RFC 9111 §4, §4.2.4; RFC 5861)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tiercache_mw.http.cache_control import RequestCacheControl
from tiercache_mw.http.freshness import current_age

if TYPE_CHECKING:
    from tiercache_mw.store.entry import StoredResponse

__all__ = ["Reuse", "ReuseDecision", "decide_reuse", "may_serve_stale_on_error"]


class Reuse(enum.Enum):
    FRESH = "fresh"  # serve it (§4.2)
    STALE_ALLOWED = "stale-allowed"  # stale, but the request's max-stale accepts it (§5.2.1.2)
    STALE_REVALIDATE = "stale-while-revalidate"  # serve now, refresh behind (RFC 5861 §3)
    VALIDATE = "validate"  # forward with the stored validators (§4.3.1)


@dataclass(frozen=True, slots=True)
class ReuseDecision:
    action: Reuse
    age: float  # current age (§4.2.3)
    ttl: float  # freshness left; negative once stale


def decide_reuse(stored: StoredResponse, req_cc: RequestCacheControl, now: float) -> ReuseDecision:
    """How `stored` may answer a request with directives `req_cc` at `now`.

    - §5.2.2.4 response no-cache and §5.2.1.4 request no-cache: validate first;
    - §5.2.1.1 request max-age: an older response is validated;
    - §4.2 fresh (with §5.2.1.3 min-fresh left) is served;
    - stale: never served when must-revalidate / proxy-revalidate / s-maxage forbid it
      (§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10); else within the request's max-stale
      (§5.2.1.2), else within stale-while-revalidate (RFC 5861 §3), else validated.
    """
    age = current_age(stored, now)
    ttl = stored.freshness_lifetime - age
    if stored.requires_validation or req_cc.no_cache:
        return ReuseDecision(Reuse.VALIDATE, age, ttl)
    if req_cc.max_age is not None and age > req_cc.max_age:
        return ReuseDecision(Reuse.VALIDATE, age, ttl)
    if ttl > 0:
        if req_cc.min_fresh is None or ttl >= req_cc.min_fresh:
            return ReuseDecision(Reuse.FRESH, age, ttl)
        return ReuseDecision(Reuse.VALIDATE, age, ttl)  # fresh, but not fresh enough
    if stored.must_revalidate:
        return ReuseDecision(Reuse.VALIDATE, age, ttl)
    staleness = -ttl
    if req_cc.max_stale is not None and staleness <= req_cc.max_stale:
        return ReuseDecision(Reuse.STALE_ALLOWED, age, ttl)
    swr = stored.stale_while_revalidate
    if swr > 0 and req_cc.min_fresh is None and staleness <= swr:
        return ReuseDecision(Reuse.STALE_REVALIDATE, age, ttl)
    return ReuseDecision(Reuse.VALIDATE, age, ttl)


def may_serve_stale_on_error(
    stored: StoredResponse, req_cc: RequestCacheControl, now: float
) -> bool:
    """RFC 5861 §4: on a 5xx or a failure, the stored response may answer within the
    stale-if-error window the response (or the rule, or the request) grants.

    Never when the response forbids stale use (§4.2.4: must-revalidate, proxy-revalidate,
    s-maxage, no-cache).
    """
    if stored.must_revalidate or stored.requires_validation:
        return False
    window = stored.stale_if_error
    if req_cc.stale_if_error is not None:
        window = max(window, float(req_cc.stale_if_error))
    if window <= 0:
        return False
    staleness = current_age(stored, now) - stored.freshness_lifetime
    return staleness <= window
