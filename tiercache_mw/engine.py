"""The request flow the ASGI and WSGI adapters share, with the I/O left to them.

The adapters turn a scope or an environ into a `RequestView`, then ask this module what to do
at each step: `plan` (may this request use the cache?), `resolve` (which entry answers it, with
Vary), `reuse` (serve, serve and refresh, or validate with the app), `on_response` (what to do
with the app's response head), `finish` (store the body). Every HTTP decision is delegated to
the pure functions in `tiercache_mw.http`; the store is `TierCache`'s entry API.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiercache_mw.config import Config, TtlRule, load_config
from tiercache_mw.http.cache_control import (
    RequestCacheControl,
    ResponseCacheControl,
    request_cache_control,
    response_cache_control,
)
from tiercache_mw.http.cache_status import cache_status
from tiercache_mw.http.conditional import (
    Precondition,
    evaluate_preconditions,
    freshen,
    not_modified_headers,
    validation_headers,
    validator_matches,
)
from tiercache_mw.http.freshness import current_age, initial_age
from tiercache_mw.http.headers import get_header
from tiercache_mw.http.invalidation import UNSAFE_METHODS, invalidation_urls
from tiercache_mw.http.key import primary_key, url_for, vary_key
from tiercache_mw.http.ranges import answer_range
from tiercache_mw.http.response import (
    StorePolicy,
    build_stored_response,
    client_headers,
    surrogate_tags,
)
from tiercache_mw.http.reuse import Reuse, decide_reuse, may_serve_stale_on_error
from tiercache_mw.http.storability import REQUEST_AUTHORIZED, StoreVerdict, decide_store
from tiercache_mw.rules import RouteTable, TtlRules
from tiercache_mw.store.cache import TierCache
from tiercache_mw.store.entry import Entry, Residency, StoredResponse, Tags

__all__ = [
    "Action",
    "ConfigSource",
    "Exchange",
    "HttpCache",
    "Reply",
    "RequestView",
    "ResponsePlan",
    "build_cache",
]

logger = logging.getLogger("tiercache_mw")

Headers = list[tuple[bytes, bytes]]

# A Vary'd URL keeps this marker under its primary key; the variants live under secondary keys.
VARY_MARKER = "tiercache-vary"
URL_TAG = "url"
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# Varnish's builtin VCL keeps a hit-for-miss object for 120 s once a response proves
# uncacheable; a few thousand keys bound the RAM it takes (~100 B a key).
NOT_STORABLE_SECONDS = 120.0
NOT_STORABLE_KEYS = 4096
_EMPTY_REQUEST_CC = RequestCacheControl(
    max_age=None, max_stale=None, min_fresh=None, no_cache=False, no_store=False,
    only_if_cached=False,
)  # fmt: skip


@dataclass(slots=True)
class RequestView:
    """The parts of a request the cache reads. Header names are lowercase bytes."""

    method: str
    scheme: str
    host: str
    path: str  # decoded, for route patterns
    raw_path: str  # as sent, for the key: /a%2Fb and /a/b are different resources
    query: str
    headers: Headers


class Action(enum.Enum):
    FORWARD = "forward"  # call the app; the Exchange says whether and how to store
    SERVE = "serve"  # answer from the entry
    SERVE_AND_REFRESH = "serve-and-refresh"  # stale-while-revalidate
    GATEWAY_TIMEOUT = "gateway-timeout"  # only-if-cached with nothing usable (§5.2.1.7)


@dataclass(slots=True)
class Exchange:
    """One request's state between the adapter's steps."""

    request: RequestView
    fwd: str  # the Cache-Status fwd value if this goes to the app
    cacheable: bool  # GET/HEAD on a cached route
    key: str = ""  # where the entry lives (primary key, or the variant key)
    primary: str = ""
    url: str = ""
    route_tags: Tags = ()
    req_cc: RequestCacheControl = _EMPTY_REQUEST_CC
    entry: Entry | None = None  # the entry found, fresh or stale
    tier: str = ""
    validating: bool = False  # the forwarded request carries our validators
    collapsed: bool = False
    request_time: float = 0.0
    forward_headers: Headers | None = None  # request headers to send instead of the client's
    received_status: int = 0  # the app's status on the last forward (0 before any)
    # A conditional miss sent without its conditions: a storable answer is stored first, then
    # the client's conditions are answered from it (`HttpCache.answer_from_stored`).
    answer_from_store: bool = False

    @property
    def forwards_a_range(self) -> bool:
        """Does the request sent to the app ask for a part? (Validation sends it without
        one.) Its answer is never stored, so no request is collapsed onto it."""
        headers = self.request.headers if self.forward_headers is None else self.forward_headers
        return any(name == b"range" for name, _ in headers)


@dataclass(slots=True)
class Reply:
    """A response the cache answers with by itself."""

    status: int
    headers: Headers
    body: bytes


class ResponsePlan(enum.Enum):
    PASS = "pass"  # send the app's response, do not store
    STORE = "store"  # send it and keep the body for the store
    # Keep the body for the store and send nothing yet: once stored, the client gets
    # `HttpCache.answer_from_stored` (its conditions answered from the new entry). A body that
    # passes max_entry_bytes is sent as a PASS after all, with `headers`.
    STORE_THEN_ANSWER = "store-then-answer"
    SERVE_STORED = "serve-stored"  # drop the app's response, send `reply` instead
    # Drop the app's response and call it again with `exchange.forward_headers`: it answered
    # the cache's validators with a 304 for another representation (RFC 9111 §4.3.4).
    RETRY = "retry"

    @property
    def stores(self) -> bool:
        """The app's body is kept for the store."""
        return self is ResponsePlan.STORE or self is ResponsePlan.STORE_THEN_ANSWER

    @property
    def replaces_response(self) -> bool:
        """The app's response is dropped, not sent (its body drained quietly)."""
        return self is ResponsePlan.SERVE_STORED or self is ResponsePlan.RETRY


@dataclass(slots=True)
class ResponseDecision:
    plan: ResponsePlan
    headers: Headers  # for PASS/STORE (and STORE_THEN_ANSWER sent as a pass): the client's
    reply: Reply | None = None
    stored: StoredResponse | None = None  # for STORE: the response, body still to come
    tags: Tags = ()
    rule: TtlRule | None = None
    vary: tuple[str, ...] = field(default=())
    # For STORE_THEN_ANSWER: the app's fields as a plain miss sends them (`client_headers`),
    # for the client that caused the fetch; the stored copy may lack some (private="F").
    app_headers: Headers = field(default_factory=list)


ConfigSource = str | Path | Config | dict[str, Any] | None


def build_cache(cache: TierCache | None, config: ConfigSource) -> TierCache:
    """The TierCache a middleware uses: the one given, or one built from `config`."""
    if cache is not None:
        if config is not None:
            raise TypeError("pass either cache= or config=, not both")
        return cache
    if isinstance(config, Config):
        return TierCache(config)
    return TierCache(load_config(config))


class HttpCache:
    """Binds a TierCache, the route and TTL rules and the RFC 9111 policy."""

    def __init__(self, cache: TierCache, *, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        # Wall-clock source for every freshness decision; tests inject a fake one.
        self.clock = clock
        config = cache.config
        self.http = config.http
        self.name = config.http.cache_name
        self.routes = RouteTable.from_config(config)
        self.ttl_rules = TtlRules.from_config(config)
        # Removals started from an event loop (`_forget`), held until done.
        self._background: set[asyncio.Task[bool]] = set()
        # Keys whose last response could not be stored: a conditional miss on one goes to
        # the app with its conditions, whose own 304 is then the cheaper answer.
        self._not_storable = _NotStorableKeys(NOT_STORABLE_SECONDS, NOT_STORABLE_KEYS)

    # ---- planning -----------------------------------------------------------------------
    def plan(self, request: RequestView) -> Exchange:
        method = request.method
        url = url_for(request.scheme, request.host, request.raw_path, request.query)
        if method not in _CACHEABLE_METHODS:
            return Exchange(request, fwd="method", cacheable=False, url=url)
        route = self.routes.match(request.path)
        if route is not None and not route.cache:
            return Exchange(request, fwd="bypass", cacheable=False, url=url)
        primary = primary_key(method, request.scheme, request.host, request.raw_path, request.query)
        return Exchange(
            request,
            fwd="uri-miss",
            cacheable=True,
            key=primary,
            primary=primary,
            url=url,
            route_tags=route.tags if route is not None else (),
            req_cc=request_cache_control(request.headers),
        )

    def resolve(self, exchange: Exchange, found: tuple[Entry, str] | None) -> str | None:
        """Take the result of looking up `exchange.key`.

        Returns a variant key to look up next (the URL varies), or None when done: then
        `exchange.entry` is the answer or None for a miss.
        """
        if found is None:
            return None
        entry, tier = found
        value = entry.value
        if isinstance(value, StoredResponse):
            exchange.entry, exchange.tier = entry, tier
            return None
        names = _vary_marker_names(value)
        if names is None or exchange.key != exchange.primary:
            return None  # a key/value entry under an HTTP key, or a marker where a variant was
        variant = vary_key(exchange.primary, names, exchange.request.headers)
        exchange.fwd = "vary-miss"
        if variant is None:
            return None
        exchange.key = variant
        return variant

    def reuse(self, exchange: Exchange, now: float) -> Action:
        """Decide how a found entry is used (RFC 9111 §4), filling the Exchange for a forward."""
        entry = exchange.entry
        if entry is None:
            if exchange.req_cc.only_if_cached:
                return Action.GATEWAY_TIMEOUT
            fills = _fills_before_answering(exchange.request, exchange.req_cc)
            if fills and not self._not_storable.holds(exchange.primary, now):
                # As Varnish: ask for the whole response, store it, answer the client's
                # If-None-Match/If-Modified-Since from it, so the next poll is a hit. Not
                # while the key's last response could not be stored (its hit-for-miss).
                exchange.answer_from_store = True
                exchange.forward_headers = _without_validation_conditions(exchange.request.headers)
            return Action.FORWARD
        stored: StoredResponse = entry.value
        if exchange.req_cc.no_store:
            exchange.fwd = "request"
            return Action.FORWARD
        decision = decide_reuse(stored, exchange.req_cc, now)
        # only-if-cached forbids asking the app (§5.2.1.7): then the stored response is sent.
        if (
            decision.action in _SERVABLE
            and not exchange.req_cc.only_if_cached
            and _app_must_evaluate(exchange.request, stored)
        ):
            exchange.fwd = "request"
            self.prepare_validation(exchange, stored)
            return Action.FORWARD
        if decision.action in (Reuse.FRESH, Reuse.STALE_ALLOWED):
            return Action.SERVE
        if decision.action is Reuse.STALE_REVALIDATE:
            return Action.SERVE_AND_REFRESH
        if exchange.req_cc.only_if_cached:
            return Action.GATEWAY_TIMEOUT
        exchange.fwd = "request" if exchange.req_cc.no_cache else "stale"
        self.prepare_validation(exchange, stored)
        return Action.FORWARD

    def prepare_validation(self, exchange: Exchange, stored: StoredResponse) -> None:
        """Forward with our validators instead of the client's own conditions (§4.3.1), and
        without Range/If-Range: the answer is to freshen or replace the whole stored response,
        so the app must send a 304 or the whole 200, not a part we could not store."""
        headers = exchange.request.headers
        validators = validation_headers(stored)
        if validators:
            exchange.validating = True
            exchange.forward_headers = _without_validation_conditions(headers) + validators
        elif _has_range_fields(headers):
            exchange.forward_headers = _without_range_fields(headers)

    # ---- answering from the cache -------------------------------------------------------
    def hit_reply(self, exchange: Exchange, now: float) -> Reply:
        assert exchange.entry is not None
        stored: StoredResponse = exchange.entry.value
        age = current_age(stored, now)
        status_value = cache_status(
            self.name,
            hit=True,
            ttl=stored.freshness_lifetime - age,
            detail=exchange.tier,
            collapsed=exchange.collapsed,
            key=exchange.key if self.http.debug_key else None,
        )
        return self._reply_from_stored(exchange, stored, age, status_value)

    def collapsed_reply(
        self, exchange: Exchange, now: float, *, fwd_status: int | None = None
    ) -> Reply:
        """A request that waited for another's forward, answered from what that one stored.

        `fwd_status` is the status the forward it waited for received (the leader's
        `Exchange.received_status`): a 304 that freshened the entry is not the stored 200.
        Left out when not given, and on plain misses, where it would repeat the status line.
        """
        assert exchange.entry is not None
        stored: StoredResponse = exchange.entry.value

        def status_value(sent: int) -> bytes:
            return cache_status(
                self.name,
                fwd=exchange.fwd,
                fwd_status=self._fwd_status_sent(exchange, fwd_status, sent),
                collapsed=True,
                key=self._debug_key(exchange),
            )

        return self._reply_from_stored(exchange, stored, current_age(stored, now), status_value)

    def answer_from_stored(
        self, exchange: Exchange, decision: ResponseDecision, *, stored: bool
    ) -> Reply:
        """The client's answer to a STORE_THEN_ANSWER forward, once `finish` has the body:
        its own conditions (and Range) answered from the response just received, `stored`
        when `finish` gave entries to put. A 304 or 206 says fwd-status=200: without it
        Cache-Status would claim the app sent that status (RFC 9211 §2.3).

        The conditions are evaluated against the stored validators, but this client gets the
        app's own fields, as on a plain miss: the ones a qualified private="F"/no-cache="F"
        kept out of the store (Set-Cookie) were sent to it (RFC 9111 §5.2.2.4, §5.2.2.7 only
        bar storing them). A 304 carries the fields RFC 9110 §15.4.5 lists, as from a hit."""
        assert decision.stored is not None
        response = decision.stored.replace(headers=decision.app_headers)

        def status_value(sent: int) -> bytes:
            return cache_status(
                self.name,
                fwd=exchange.fwd,
                fwd_status=self._fwd_status_sent(exchange, exchange.received_status, sent),
                stored=stored,
                collapsed=exchange.collapsed,
                key=self._debug_key(exchange),
            )

        age = current_age(response, self.clock())
        kept_out = self._fields_kept_from_store(decision.stored, decision.app_headers)
        return self._reply_from_stored(exchange, response, age, status_value, kept_out)

    @staticmethod
    def _fwd_status_sent(exchange: Exchange, received: int | None, sent: int) -> int | None:
        """fwd-status for a reply with status `sent` from a stored response: on a plain miss
        only when it differs from `sent` (else it would repeat the status line)."""
        if exchange.fwd in _PLAIN_MISSES and received == sent:
            return None
        return received or None

    def refresh_exchange(self, exchange: Exchange) -> Exchange:
        """A GET with the entry's validators, for a background refresh of `exchange.key`."""
        assert exchange.entry is not None
        request = exchange.request
        refresh = Exchange(
            RequestView("GET", request.scheme, request.host, request.path, request.raw_path,
                        request.query, request.headers),
            fwd="stale",
            cacheable=True,
            key=exchange.key,
            primary=exchange.primary,
            url=exchange.url,
            route_tags=exchange.route_tags,
            entry=exchange.entry,
            tier=exchange.tier,
        )  # fmt: skip
        self.prepare_validation(refresh, exchange.entry.value)
        return refresh

    def gateway_timeout(self, exchange: Exchange) -> Reply:
        status_value = cache_status(self.name, fwd="miss", key=self._debug_key(exchange))
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"0"),
            (b"cache-status", status_value),
        ]
        return Reply(504, headers, b"")

    def _reply_from_stored(
        self,
        exchange: Exchange,
        stored: StoredResponse,
        age: float,
        status_value: bytes | Callable[[int], bytes],
        client_fields: Headers | None = None,
    ) -> Reply:
        """`status_value` is the Cache-Status value, or makes it from the status sent;
        `client_fields` go on a 304 too (the fields the app sent this very client that the
        stored copy may not keep: `_fields_kept_from_store`)."""
        request = exchange.request
        age_header = (b"age", str(max(0, int(age))).encode())

        def own(status: int) -> Headers:
            value = status_value if isinstance(status_value, bytes) else status_value(status)
            return [age_header, (b"cache-status", value)]

        precondition = evaluate_preconditions(request.headers, stored)
        if precondition is Precondition.NOT_MODIFIED:
            headers = not_modified_headers(stored)
            if client_fields:
                headers += client_fields
            headers += own(304)
            return Reply(304, headers, b"")
        if precondition is Precondition.FAILED:
            headers = [(b"content-length", b"0"), *own(412)]
            return Reply(412, headers, b"")
        # ASK_APP is sent as stored: the app was asked (`reuse`), or is failing (stale-if-error).
        if request.method == "GET":
            # Range is defined for GET only (RFC 9110 §14.2): a HEAD gets the whole head.
            part = answer_range(request.headers, stored)
            if part is not None:
                part.headers.extend(own(part.status))
                return Reply(part.status, part.headers, part.body)
        headers = list(stored.headers)
        headers += own(stored.status)
        return Reply(stored.status, headers, b"" if request.method == "HEAD" else stored.body)

    # ---- the app's response ------------------------------------------------------------------
    def on_response(self, exchange: Exchange, status: int, headers: Headers) -> ResponseDecision:
        """Decide what happens to the app's response once its status and headers are known."""
        now = self.clock()
        request = exchange.request
        exchange.received_status = status
        headers = [(name.lower(), value) for name, value in headers]
        entry = exchange.entry
        if entry is not None and status >= 500:
            stored_for_error: StoredResponse = entry.value
            if may_serve_stale_on_error(stored_for_error, exchange.req_cc, now):
                return self._stale_on_error(exchange, status, now)
        if not exchange.cacheable:
            return self._pass(exchange, status, headers, now, fwd_status=False)
        cc = response_cache_control(headers, targeted_field=self.http.targeted_cache_control)
        if entry is not None and (status == 304 or request.method == "HEAD"):
            # An update (§4.3.4, §4.3.5): the entry keeps the tags it was stored with.
            tags = _updated_tags(entry.tags, headers)
        else:
            tags = self._tags(exchange, headers)
        rule = self.ttl_rules.for_tags(tags)
        policy = StorePolicy.for_rule(self.http, rule)
        if status == 304:
            if entry is not None and validator_matches(entry.value, headers):
                return self._freshened(exchange, entry.value, headers, policy, tags, now)
            # §4.3.4: the 304 selects no stored response, so it updates nothing, and a client
            # that sent no condition must not get it (§4.3.3).
            if exchange.validating:
                return self._retry_unconditionally(exchange)
            sent = exchange.forward_headers
            if sent is None:
                sent = exchange.request.headers
            if not _has_validation_condition(sent):
                return self._invalid_not_modified(exchange, now)
        if request.method == "HEAD":
            self._freshen_from_head(exchange, status, headers, policy, tags, now)
            return self._pass(exchange, status, headers, now, fwd_status=entry is not None)
        stored = build_stored_response(
            status,
            headers,
            b"",
            request_time=exchange.request_time,
            response_time=now,
            cc=cc,
            policy=policy,
        )
        storable = self._may_store(exchange, request.method, headers, cc, stored).store
        too_large = _content_length(headers) > self.http.max_entry_bytes
        if not storable or too_large:
            if status != 304:  # a 304 says nothing of whether the whole response is storable
                self.mark_not_storable(exchange)
            return self._pass(exchange, status, headers, now, fwd_status=entry is not None)
        plan = ResponsePlan.STORE_THEN_ANSWER if exchange.answer_from_store else ResponsePlan.STORE
        app_headers = client_headers(headers, self.http)
        # STORE_THEN_ANSWER's headers are only sent when the body proves too large to store.
        own = self._own_headers(
            exchange, stored.initial_age, status, stored=plan is ResponsePlan.STORE
        )
        return ResponseDecision(
            plan,
            [*app_headers, *own],
            stored=stored,
            tags=tags,
            rule=rule,
            vary=stored.vary,
            app_headers=app_headers,
        )

    def finish(self, exchange: Exchange, decision: ResponseDecision, body: bytes) -> list[Entry]:
        """The whole body of a STORE response has arrived: the entries to put into hot."""
        stored = decision.stored
        assert stored is not None
        stored.body = body
        residency = self.cache.residency_for(decision.tags, ttl_seconds=None)
        entries: list[Entry] = []
        key = exchange.primary
        if decision.vary:
            variant = vary_key(exchange.primary, decision.vary, exchange.request.headers)
            if variant is None:
                return []
            marker = {VARY_MARKER: list(decision.vary)}
            entries.append(self.cache.make_entry(key, marker, decision.tags, residency))
            key = variant
        entries.append(self.cache.make_entry(key, stored, decision.tags, residency))
        self._not_storable.discard((exchange.primary,))
        return entries

    def mark_not_storable(self, exchange: Exchange) -> None:
        """The response to `exchange` could not be stored (the adapters call this when a body
        passes max_entry_bytes mid-stream): for NOT_STORABLE_SECONDS a conditional miss on its
        key keeps its conditions (Varnish's hit-for-miss). Not when the request itself kept
        the response out of the store (Authorization, no-store, Range): others' may fill it."""
        if _may_fill(exchange.request, exchange.req_cc):
            self._not_storable.add(exchange.primary, self.clock())

    def invalidations(self, exchange: Exchange, status: int, headers: Headers) -> list[str]:
        """URLs an unsafe request invalidates (RFC 9111 §4.4)."""
        if exchange.request.method not in UNSAFE_METHODS:
            return []
        lowered = [(name.lower(), value) for name, value in headers]
        urls = invalidation_urls(exchange.request.method, status, exchange.url, lowered)
        # What is stored next may be storable. A GET's primary key is its URL: a few pops.
        self._not_storable.discard(urls)
        return urls

    # ---- helpers --------------------------------------------------------------------------
    def _may_store(
        self,
        exchange: Exchange,
        method: str,
        headers: Headers,
        cc: ResponseCacheControl,
        stored: StoredResponse,
        request_headers: Headers | None = None,
    ) -> StoreVerdict:
        """RFC 9111 §3 for `stored`, built from `headers`: the one decision for a new
        response and for one a 304 or HEAD has updated (`request_headers`: the request's,
        unless given)."""
        has_validator = stored.etag is not None or stored.last_modified is not None
        return decide_store(
            method,
            stored.status,
            exchange.request.headers if request_headers is None else request_headers,
            headers,
            cc,
            req_cc=exchange.req_cc,
            store_set_cookie=self.http.store_set_cookie,
            has_freshness=stored.freshness_lifetime > 0 or has_validator,
        )

    def _store_update(
        self, exchange: Exchange, updated: StoredResponse, tags: Tags, residency: Residency
    ) -> None:
        """Put the stored GET response, updated from a 304 or HEAD, back under its key, when
        it may stay stored (§3 decided again on the merged fields as stored, so that a field a
        qualified private/no-cache dropped does not count; Varnish too runs
        vcl_backend_response again on the object a 304 merged).

        When the merged fields now say Set-Cookie, `private` or `no-store`, the stored copy
        must not outlive what the app says of it, and goes. When only this request objects
        (its Authorization, §3.5), the update is not stored but the entry, stored from a
        request that could share it, stays as it was: a later client revalidates it again.
        This client gets the updated response either way."""
        headers = list(updated.headers)
        cc = response_cache_control(headers, targeted_field=self.http.targeted_cache_control)
        verdict = self._may_store(exchange, "GET", headers, cc, updated)
        if verdict.store:
            self.cache.put(self.cache.make_entry(exchange.key, updated, tags, residency))
            return
        if verdict.reason == REQUEST_AUTHORIZED:
            # §3.5 is checked first: would the merged response itself stay storable?
            anonymous = [
                field for field in exchange.request.headers if field[0] != b"authorization"
            ]
            if self._may_store(exchange, "GET", headers, cc, updated, anonymous).store:
                return
        self._forget(exchange.key)
        self.mark_not_storable(exchange)

    def _forget(self, key: str) -> None:
        """Remove `key` (the entry's own key: its variant key when the URL varies, so the
        other variants stay) from this process's RAM now and from every tier soon after."""
        self.cache.invalidate_local((key,))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a WSGI thread: it may wait for the tiers below
            self.cache.delete_sync(key)
            return
        # On an event loop nothing may block: the tiers below are cleared in the background.
        task = loop.create_task(self.cache.delete(key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the removals `_forget` started on an event loop (the ASGI middleware's
        close(), before the cache closes: a delete still pending then could be dropped and
        leave the dry copy). WSGI's removals ran in the request thread: nothing waits."""
        loop = asyncio.get_running_loop()
        # Only this loop's: a task of a loop that has ended cannot be awaited here.
        while pending := [task for task in self._background if task.get_loop() is loop]:
            await asyncio.gather(*pending, return_exceptions=True)

    def _tags(self, exchange: Exchange, headers: Headers) -> Tags:
        url = exchange.url
        # A GET's primary key is its URL: the tag shares the key's string, not a second copy.
        if url == exchange.key:
            url = exchange.key
        return (*exchange.route_tags, *surrogate_tags(headers), (URL_TAG, url))

    def _debug_key(self, exchange: Exchange) -> str | None:
        return exchange.key if self.http.debug_key and exchange.key else None

    def _own_headers(
        self, exchange: Exchange, age: float, status: int, *, stored: bool, fwd_status: bool = True
    ) -> Headers:
        status_value = cache_status(
            self.name,
            fwd=exchange.fwd,
            fwd_status=status if fwd_status and exchange.fwd not in _PLAIN_MISSES else None,
            stored=stored,
            collapsed=exchange.collapsed,
            key=self._debug_key(exchange),
        )
        return [(b"age", str(max(0, int(age))).encode()), (b"cache-status", status_value)]

    def _pass(
        self, exchange: Exchange, status: int, headers: Headers, now: float, *, fwd_status: bool
    ) -> ResponseDecision:
        age = initial_age(headers, request_time=exchange.request_time or now, response_time=now)
        forwarded = client_headers(headers, self.http)
        forwarded += self._own_headers(exchange, age, status, stored=False, fwd_status=fwd_status)
        return ResponseDecision(ResponsePlan.PASS, forwarded)

    def _stale_on_error(self, exchange: Exchange, status: int, now: float) -> ResponseDecision:
        assert exchange.entry is not None
        stored: StoredResponse = exchange.entry.value
        status_value = cache_status(
            self.name,
            fwd=exchange.fwd if exchange.fwd in ("stale", "request") else "stale",
            fwd_status=status,
            detail="stale-if-error",
            key=self._debug_key(exchange),
        )
        reply = self._reply_from_stored(exchange, stored, current_age(stored, now), status_value)
        return ResponseDecision(ResponsePlan.SERVE_STORED, [], reply=reply)

    def _retry_unconditionally(self, exchange: Exchange) -> ResponseDecision:
        """Ask again without the cache's validators; the client's other fields stay, but
        Range and If-Range, as when validating: the whole response is to be stored."""
        exchange.validating = False
        exchange.forward_headers = _without_validation_conditions(exchange.request.headers)
        return ResponseDecision(ResponsePlan.RETRY, [])

    def _invalid_not_modified(self, exchange: Exchange, now: float) -> ResponseDecision:
        """A 304 to a request with no condition at all: an error from the app, answered as
        one (502, RFC 9110 §15.6.3; Varnish fails such a fetch too), or stale-if-error."""
        entry = exchange.entry
        if entry is not None and may_serve_stale_on_error(entry.value, exchange.req_cc, now):
            return self._stale_on_error(exchange, 304, now)
        status_value = cache_status(
            self.name, fwd=exchange.fwd, fwd_status=304, key=self._debug_key(exchange)
        )
        headers = [(b"content-length", b"0"), (b"cache-status", status_value)]
        return ResponseDecision(ResponsePlan.SERVE_STORED, [], reply=Reply(502, headers, b""))

    def stale_on_exception(self, exchange: Exchange) -> Reply | None:
        """The app raised: the stale entry if stale-if-error allows it (RFC 5861 §4)."""
        if exchange.entry is None:
            return None
        now = self.clock()
        if not may_serve_stale_on_error(exchange.entry.value, exchange.req_cc, now):
            return None
        decision = self._stale_on_error(exchange, 500, now)
        return decision.reply

    def _freshened(
        self,
        exchange: Exchange,
        stored: StoredResponse,
        headers: Headers,
        policy: StorePolicy,
        tags: Tags,
        now: float,
    ) -> ResponseDecision:
        updated = self._freshen(exchange, stored, headers, policy, now)
        assert exchange.entry is not None
        # §5.2.1.5: no part of a no-store request's response is stored, the 304's fields
        # included; the client still gets the freshened response.
        if not exchange.req_cc.no_store:
            residency = self.cache.residency_for(tags, ttl_seconds=None)
            self._store_update(exchange, updated, tags, residency)
        status_value = cache_status(
            self.name,
            fwd=exchange.fwd,
            fwd_status=304,
            collapsed=exchange.collapsed,
            key=self._debug_key(exchange),
        )
        # This client also gets what the 304 sent it that the stored copy may not keep.
        kept_out = self._fields_kept_from_store(updated, headers)
        client_view = (
            updated.replace(headers=(*updated.headers, *kept_out)) if kept_out else updated
        )
        reply = self._reply_from_stored(
            exchange, client_view, current_age(updated, now), status_value, kept_out
        )
        return ResponseDecision(ResponsePlan.SERVE_STORED, [], reply=reply)

    def _fields_kept_from_store(self, stored: StoredResponse, headers: Headers) -> Headers:
        """The fields of `headers` (what the app sent this client) that a qualified
        private="F"/no-cache="F" in `stored` kept out of the stored copy, as its Set-Cookie:
        RFC 9111 §5.2.2.4 and §5.2.2.7 only bar storing and reusing them, so the client the
        app sent them to still gets them, on a 200 or a 304, and no one after."""
        cc = response_cache_control(
            list(stored.headers), targeted_field=self.http.targeted_cache_control
        )
        named = {name.encode("latin-1") for name in (*cc.private_fields, *cc.no_cache_fields)}
        if not named:
            return []
        return [(name, value) for name, value in headers if name in named]

    def _freshen(
        self,
        exchange: Exchange,
        stored: StoredResponse,
        headers: Headers,
        policy: StorePolicy,
        now: float,
    ) -> StoredResponse:
        return freshen(
            stored, headers, request_time=exchange.request_time, response_time=now, policy=policy
        )

    def _freshen_from_head(
        self,
        exchange: Exchange,
        status: int,
        headers: Headers,
        policy: StorePolicy,
        tags: Tags,
        now: float,
    ) -> None:
        """A HEAD response updates the stored GET response it matches (RFC 9111 §4.3.5)."""
        entry = exchange.entry
        if entry is None or status != entry.value.status:
            return
        if not validator_matches(entry.value, headers):
            # The representation changed: keep the entry but make its next use validate.
            stale = entry.value.replace(freshness_lifetime=0.0)
            self.cache.put(self.cache.make_entry(exchange.key, stale, entry.tags, entry.residency))
            return
        if exchange.req_cc.no_store:
            return  # §5.2.1.5: none of this response's fields are stored
        updated = self._freshen(exchange, entry.value, headers, policy, now)
        self._store_update(exchange, updated, tags, entry.residency)


# The conditions a 304 answers (RFC 9110 §15.4.5); the cache replaces them with its own.
_CONDITIONAL_FIELDS = frozenset({b"if-none-match", b"if-modified-since"})
# Not sent when the cache asks for a whole response to store (RFC 9110 §14.2, §13.1.5).
_RANGE_FIELDS = frozenset({b"range", b"if-range"})
_NOT_SENT_WHEN_VALIDATING = _CONDITIONAL_FIELDS | _RANGE_FIELDS
# A conditional miss carrying one of these goes to the app with its conditions.
_MISS_KEEPS_CONDITIONS = frozenset({b"range", b"authorization"})
_SERVABLE = frozenset({Reuse.FRESH, Reuse.STALE_ALLOWED, Reuse.STALE_REVALIDATE})
# A miss's fwd-status would only repeat the response's own status; Cache-Status leaves it out.
_PLAIN_MISSES = frozenset({"uri-miss", "vary-miss"})


def _fills_before_answering(request: RequestView, req_cc: RequestCacheControl) -> bool:
    """Is this GET miss sent without its If-None-Match/If-Modified-Since, to store the
    whole response and answer those from it? Only when it may fill the cache (`_may_fill`),
    and, in `HttpCache.reuse`, unless the key's last response could not be stored.
    If-Match/If-Unmodified-Since still go: the app may have its own logic for them."""
    return _may_fill(request, req_cc) and _has_validation_condition(request.headers)


def _may_fill(request: RequestView, req_cc: RequestCacheControl) -> bool:
    """May this GET's response be stored for others? Not with Range (a range miss passes
    through, see docs/http-semantics.md), nor with request no-store or Authorization (§3.5):
    then the app's own 304 is the cheaper answer to a conditional miss."""
    if request.method != "GET" or req_cc.no_store:
        return False
    return not any(name in _MISS_KEEPS_CONDITIONS for name, _ in request.headers)


class _NotStorableKeys:
    """Primary keys (URLs) whose last response could not be stored, each until an expiry:
    Varnish's hit-for-miss object, which is per URL too (a variant that may not be stored
    marks them all). In this process's RAM, not an entry in the tiers: a mark must expire at
    a fixed time (a tier's residency restarts on use), is never demoted, shared or persisted,
    and a stale one only costs the app's own 304 instead of a fill."""

    def __init__(self, seconds: float, capacity: int) -> None:
        self._seconds = seconds
        self._capacity = capacity
        # key -> expiry; oldest first, so the front is also the first to expire
        self._expiries: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # WSGI worker threads share the engine

    def add(self, key: str, now: float) -> None:
        with self._lock:
            self._expiries[key] = now + self._seconds
            self._expiries.move_to_end(key)
            while len(self._expiries) > self._capacity:
                self._expiries.popitem(last=False)

    def holds(self, key: str, now: float) -> bool:
        if not self._expiries:  # the usual case: no lock taken
            return False
        with self._lock:
            expiry = self._expiries.get(key)
            if expiry is None:
                return False
            if expiry > now:
                return True
            del self._expiries[key]
            return False

    def discard(self, keys: Iterable[str]) -> None:
        if not self._expiries:
            return
        with self._lock:
            for key in keys:
                self._expiries.pop(key, None)


def _app_must_evaluate(request: RequestView, stored: StoredResponse) -> bool:
    """If-Unmodified-Since on a response with no Last-Modified: only the app knows the date."""
    return evaluate_preconditions(request.headers, stored) is Precondition.ASK_APP


def _has_validation_condition(headers: Headers) -> bool:
    return any(name in _CONDITIONAL_FIELDS for name, _ in headers)


def _without_validation_conditions(headers: Headers) -> Headers:
    """The client's fields minus its validators and its Range: what the cache sends the app
    when it asks for the whole response to freshen or replace the stored one."""
    return [(name, value) for name, value in headers if name not in _NOT_SENT_WHEN_VALIDATING]


def _has_range_fields(headers: Headers) -> bool:
    return any(name in _RANGE_FIELDS for name, _ in headers)


def _without_range_fields(headers: Headers) -> Headers:
    return [(name, value) for name, value in headers if name not in _RANGE_FIELDS]


def _updated_tags(stored: Tags, headers: Headers) -> Tags:
    """The tags of an entry a 304 or HEAD updates: its own (route, surrogate keys, URL),
    which the update's headers do not repeat, plus any surrogate key the update adds."""
    added = tuple(tag for tag in surrogate_tags(headers) if tag not in stored)
    return (*stored, *added) if added else stored


def _vary_marker_names(value: object) -> tuple[str, ...] | None:
    if isinstance(value, dict) and VARY_MARKER in value:
        return tuple(str(name) for name in value[VARY_MARKER])
    return None


def _content_length(headers: Headers) -> int:
    value = get_header(headers, b"content-length")
    if value is None:
        return 0
    try:
        return int(value.split(b",")[0])
    except ValueError:
        return 0
