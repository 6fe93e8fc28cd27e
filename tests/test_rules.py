"""Route patterns, the route table and TTL rule matching (tiercache_mw.rules)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tiercache_mw.config import RouteRule, load_config
from tiercache_mw.rules import MEMO_SIZE, RouteTable, TtlRules, compile_pattern
from tiercache_mw.store.entry import Tags


@pytest.mark.parametrize(
    ("pattern", "path", "params"),
    [
        # Starlette parameters and convertors
        ("/products/{id}", "/products/42", {"id": "42"}),
        ("/products/{id}", "/products/a-b.c", {"id": "a-b.c"}),
        ("/products/{id}", "/products/", None),
        ("/products/{id}", "/products/1/reviews", None),
        ("/products/{id:int}", "/products/42", {"id": "42"}),
        ("/products/{id:int}", "/products/abc", None),
        ("/prices/{p:float}", "/prices/1.5", {"p": "1.5"}),
        (
            "/u/{u:uuid}",
            "/u/6f1c2a3e-0b1d-4a5e-9f00-123456789abc",
            {"u": "6f1c2a3e-0b1d-4a5e-9f00-123456789abc"},
        ),
        ("/u/{u:uuid}", "/u/not-a-uuid", None),
        ("/static/{path:path}", "/static/css/site.css", {"path": "css/site.css"}),
        ("/static/{path:path}", "/static/", {"path": ""}),
        ("/static/{path:path}", "/static", None),
        ("/a/{x}-{y}", "/a/1-2", {"x": "1", "y": "2"}),
        ("/files/{name}.json", "/files/report.json", {"name": "report"}),
        # `*`: one segment, or part of one
        ("/reports/*", "/reports/2024", {}),
        ("/reports/*", "/reports/", None),
        ("/reports/*", "/reports/2024/q1", None),
        ("/reports/*/summary", "/reports/2024/summary", {}),
        ("/img/*.png", "/img/logo.png", {}),
        ("/img/*.png", "/img/.png", {}),
        ("/img/*.png", "/img/a/logo.png", None),
        ("/img/*.png", "/img/logo.gif", None),
        # `**`: any number of segments, none included
        ("/account/**", "/account", {}),
        ("/account/**", "/account/", {}),
        ("/account/**", "/account/orders/7", {}),
        ("/account/**", "/accounts", None),
        ("/a/**/b", "/a/b", {}),
        ("/a/**/b", "/a/x/y/b", {}),
        ("/a/**/b", "/a/x/y/c", None),
        ("/**", "/", {}),
        ("/**", "/anything/at/all", {}),
        # literals are literal, a trailing slash is significant, the end is the end
        ("/search", "/search", {}),
        ("/search", "/search/", None),
        ("/search/", "/search", None),
        ("/search/", "/search/", {}),
        ("/v1.0/items", "/v1x0/items", None),
        ("/a+b", "/a+b", {}),
        ("/a", "/a\n", None),
        ("/", "/", {}),
        ("/", "/x", None),
    ],
)
def test_pattern_matches_path_and_captures_params(
    pattern: str, path: str, params: dict[str, str] | None
) -> None:
    match = compile_pattern(pattern).match(path)
    if params is None:
        assert match is None
    else:
        assert match is not None
        assert match.groupdict() == params


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "non-empty"),
        ("products/{id}", "starts with '/'"),
        ("/a/{id:slug}", "unknown convertor 'slug'"),
        ("/a/{id}/{id}", "'id' appears twice"),
        ("/a/{id", "brace"),
        ("/a/id}", "brace"),
        ("/a/{}", "brace"),
        ("/a/{1x}", "brace"),
        ("/a/**b", "'**' must be a whole path segment"),
        ("/a/***", "'**' must be a whole path segment"),
    ],
)
def test_bad_pattern_raises_value_error_with_the_reason(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        compile_pattern(pattern)


def routes_table(*routes: dict[str, Any]) -> RouteTable:
    return RouteTable.from_config(load_config({"routes": list(routes)}))


def test_first_matching_route_wins() -> None:
    table = routes_table(
        {"pattern": "/account/**", "cache": False},
        {"pattern": "/account/avatar/{id}", "tags": {"type": "avatar"}},
        {"pattern": "/{section}/{id}", "tags": {"type": "generic"}},
        {"pattern": "/products/{id}", "tags": {"type": "product"}},
    )
    avatar = table.match("/account/avatar/1")
    assert avatar is not None
    assert avatar.pattern == "/account/**"
    assert avatar.cache is False
    product = table.match("/products/1")
    assert product is not None
    assert product.tags == (("type", "generic"),)
    assert table.match("/products") is None


def test_table_without_routes_matches_nothing() -> None:
    table = routes_table()
    assert len(table) == 0
    assert table.match("/anything") is None


def test_repeated_lookups_give_the_same_rule_and_the_memo_stays_bounded() -> None:
    table = routes_table(
        {"pattern": "/even/{n:int}", "tags": {"kind": "even"}},
        {"pattern": "/**", "tags": {"kind": "other"}},
    )
    for round_ in range(2):
        for n in range(MEMO_SIZE + 500):
            rule = table.match(f"/even/{n}" if n % 2 == 0 else f"/odd/{n}")
            assert rule is not None, round_
            assert rule.tags == ((("kind", "even"),) if n % 2 == 0 else (("kind", "other"),))
        assert len(table._memo) <= MEMO_SIZE


def ttl_rules(*rules: dict[str, Any]) -> TtlRules:
    return TtlRules.from_config(load_config({"ttl_rules": list(rules)}))


@pytest.mark.parametrize(
    ("tags", "expected_ttl"),
    [
        ((("type", "product"),), 300.0),
        ((("type", "product"), ("lang", "en")), 300.0),
        ((("lang", "en"), ("type", "product"), ("tier", "gold")), 30.0),
        ((("type", "product"), ("tier", "gold")), 30.0),
        ((("type", "static"),), 86400.0),
        ((("type", "static"), ("type", "product")), 300.0),  # a name may repeat
        ((("type", "report"),), 5.0),  # only the catch-all
        ((), 5.0),
    ],
)
def test_ttl_rules_first_rule_whose_tags_are_all_present_wins(
    tags: Tags, expected_ttl: float
) -> None:
    rules = ttl_rules(
        {"tag": {"type": "product", "lang": "en", "tier": "gold"}, "ttl_seconds": 30},
        {"tag": {"type": "product", "tier": "gold"}, "ttl_seconds": 30},
        {"tag": {"type": "product"}, "ttl_seconds": 300},
        {"tag": {"type": "static"}, "ttl_hours": 24},
        {"tag": {}, "ttl_seconds": 5},
        {"tag": {"type": "report"}, "ttl_seconds": 999},  # shadowed by the catch-all
    )
    rule = rules.for_tags(tags)
    assert rule is not None
    assert rule.ttl_seconds == expected_ttl
    assert rules.for_tags(tags) is rule  # memoised answer is the same


def test_ttl_rules_without_a_match_give_none() -> None:
    rules = ttl_rules({"tag": {"type": "product"}, "ttl_seconds": 300})
    assert rules.for_tags((("type", "products"),)) is None
    assert rules.for_tags((("kind", "product"),)) is None
    assert rules.for_tags(()) is None
    assert ttl_rules().for_tags((("type", "product"),)) is None


def test_hand_built_route_rules_are_compiled_by_the_table() -> None:
    table = RouteTable((RouteRule("/items/{id:int}", tags=(("type", "item"),)),))
    rule = table.match("/items/7")
    assert rule is not None
    assert rule.tags == (("type", "item"),)
    assert table.match("/items/x") is None
