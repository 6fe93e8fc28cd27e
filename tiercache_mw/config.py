"""YAML / dict configuration -> typed, frozen objects, validated once at load.

Every mistake raises one `ConfigError` naming the file, the key path and what was expected.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tiercache_mw.errors import ConfigError, MissingExtraError
from tiercache_mw.rules import compile_pattern
from tiercache_mw.store.entry import Tags

__all__ = [
    "Config",
    "HttpConfig",
    "MemcachedConfig",
    "PostgresConfig",
    "RedisConfig",
    "RouteRule",
    "S3Config",
    "TierConfig",
    "TrackingConfig",
    "TtlRule",
    "describe_config",
    "load_config",
]

HOUR = 3600.0
KB = 1024
MB = 1024**2
GB = 1024**3


@dataclass(frozen=True, slots=True)
class TierConfig:
    backend: str  # hot/cold: ram | memcached | redis; dry: local | s3
    ttl_seconds: float | None  # residency since last use; None = no limit
    max_size_bytes: int | None  # None = no cap
    path: str | None = None  # local dry tier directory
    eviction: str = "sieve"  # RAM tiers: sieve | lru


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    backend: str = "sqlite"  # sqlite | redis | postgres
    path: str = ".tiercache/index.db"  # sqlite file
    flush_interval_seconds: float = 0.5  # how long writes may wait to be batched


@dataclass(frozen=True, slots=True)
class RedisConfig:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    url: str | None = None  # wins over host/port/db when set
    password: str | None = None
    prefix: str = "tiercache:"  # every key and the purge channel live under it


@dataclass(frozen=True, slots=True)
class MemcachedConfig:
    host: str = "localhost"
    port: int = 11211
    prefix: str = "tiercache:"


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None  # else the usual AWS environment variables
    secret_key: str | None = None
    prefix: str = "tiercache/"


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = "postgresql://localhost/postgres"
    table: str = "tiercache_index"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    cache_name: str = "tiercache"  # the name in Cache-Status
    max_entry_bytes: int = 10 * 1024 * 1024  # larger bodies stream through, never buffered
    targeted_cache_control: str | None = None  # e.g. "Tiercache-Cache-Control" (RFC 9213)
    collapse_timeout_seconds: float = 10.0
    expose_surrogate_keys: bool = False
    debug_key: bool = False  # add key= to Cache-Status
    store_set_cookie: bool = False  # store responses that carry Set-Cookie (Set-Cookie is kept)
    heuristic_fraction: float = 0.1  # of (Date - Last-Modified), RFC 9111 §4.2.2
    heuristic_max_seconds: float = 86400.0
    default_ttl_seconds: float = 0.0  # freshness when neither the response nor a rule sets it


@dataclass(frozen=True, slots=True)
class RouteRule:
    pattern: str
    tags: Tags = ()
    cache: bool = True
    regex: re.Pattern[str] | None = None  # compiled by the loader (rules.compile_pattern)


@dataclass(frozen=True, slots=True)
class TtlRule:
    tag: Tags  # matches entries carrying all of these pairs; () matches every entry
    ttl_seconds: float | None = None  # HTTP freshness when the response sets none
    override_origin: bool = False  # ttl_seconds wins over the response's own freshness
    hot_ttl_seconds: float | None = None  # residency per tier; None = tier default
    cold_ttl_seconds: float | None = None
    dry_ttl_seconds: float | None = None
    stale_while_revalidate_seconds: float | None = None
    stale_if_error_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    hot: TierConfig = TierConfig("ram", 4 * HOUR, 2 * GB)
    cold: TierConfig = TierConfig("ram", 24 * HOUR, 10 * GB)
    dry: TierConfig = TierConfig("local", None, 100 * GB, path=".tiercache/dry")
    tracking: TrackingConfig = TrackingConfig()
    http: HttpConfig = HttpConfig()
    routes: tuple[RouteRule, ...] = ()
    ttl_rules: tuple[TtlRule, ...] = ()
    redis: RedisConfig | None = None
    memcached: MemcachedConfig | None = None
    s3: S3Config | None = None
    postgres: PostgresConfig | None = None
    source: str = "<defaults>"  # the file path or "<dict>": where errors point
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths resolve against it


# ---- loading ---------------------------------------------------------------------------------
def load_config(source: str | os.PathLike[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML file path or a dict; None gives the embedded defaults.

    Relative paths in the result are made absolute against the YAML file's directory (the
    working directory for a dict or the defaults). Every mistake raises one ConfigError;
    a backend whose optional client is not installed raises MissingExtraError.
    """
    if source is None:
        return _build({}, "<defaults>", Path.cwd())
    if isinstance(source, dict):
        return _build(source, "<dict>", Path.cwd())
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        path = Path(name).expanduser()
        return _build(_read_yaml(path, name), name, path.absolute().parent)
    raise TypeError(f"load_config takes a file path, a dict or None, not {type(source).__name__}")


class _Shown:
    """Stands for a value in an error message where the value itself would not help."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _got(value: object) -> object:
    if value is None:
        return _Shown("null")
    if isinstance(value, Mapping):
        return _Shown("a mapping")
    if isinstance(value, list | tuple):
        return _Shown("a list")
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice, which PyYAML would silently overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:
                pass  # an unhashable key: SafeLoader reports it below
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, name: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, "", "an existing YAML file", _Shown("no such file")) from None
    except IsADirectoryError:
        raise ConfigError(name, "", "a YAML file", _Shown("a directory")) from None
    except UnicodeDecodeError as exc:
        got = _Shown(f"a byte that is not UTF-8 at offset {exc.start}")
        raise ConfigError(name, "", "a UTF-8 text file", got) from None
    except OSError as exc:
        raise ConfigError(name, "", "a readable file", _Shown(exc.strerror or str(exc))) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "a syntax error"
        raise ConfigError(name, where, f"valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, "", "valid YAML", _Shown(str(exc))) from None
    return {} if data is None else data  # an empty file is the defaults


# ---- value parsers: each returns the typed value or raises _Invalid(what it expected) --------
class _Invalid(Exception):
    def __init__(self, expected: str, *, at: str = "", got: object = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.at = at  # a deeper key path below the key being read, e.g. ".type"
        self.got = got


Parser = Callable[[Any], Any]

# PyYAML follows YAML 1.1, where `1e9` (no dot) is a string; we take it as the number meant.
_EXPONENT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    is_number = isinstance(value, int | float)
    if not (is_number or (isinstance(value, str) and _EXPONENT.fullmatch(value.strip()))):
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _number(expected: str, *, scale: float = 1.0, maximum: float | None = None,
            nullable: bool = False) -> Parser:  # fmt: skip
    def parse(value: Any) -> float | None:
        if value is None and nullable:
            return None
        number = _as_number(value)
        if number is None or number < 0 or (maximum is not None and number > maximum):
            raise _Invalid(expected)
        return number * scale

    return parse


def _size(unit: str, scale: int, *, nullable: bool) -> Parser:
    expected = f"a number of {unit} >= 0" + (" or null for no limit" if nullable else "")
    as_float = _number(expected, scale=scale, nullable=nullable)

    def parse(value: Any) -> int | None:
        number = as_float(value)
        return None if number is None else round(number)

    return parse


def _integer(expected: str, minimum: int, maximum: int) -> Parser:
    def parse(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (minimum <= value <= maximum)
        ):
            raise _Invalid(expected)
        return value

    return parse


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("true or false")
    return value


def _string(expected: str = "a non-empty string", *, pattern: str | None = None,
            nullable: bool = False, empty: bool = False) -> Parser:  # fmt: skip
    regex = re.compile(pattern) if pattern is not None else None

    def parse(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or (not value and not empty):
            raise _Invalid(expected)
        if regex is not None and value and not regex.fullmatch(value):
            raise _Invalid(expected)
        return value

    return parse


def _choice(*allowed: str) -> Parser:
    expected = "one of " + ", ".join(allowed)

    def parse(value: Any) -> str:
        if value not in allowed or not isinstance(value, str):
            raise _Invalid(expected)
        return value

    return parse


def _tags(value: Any) -> Tags:
    expected = "a mapping of tag names to string values, such as {type: product}"
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _Invalid(expected)
    pairs = []
    for name, tag_value in value.items():
        if not isinstance(name, str) or not name:
            raise _Invalid("tag names that are non-empty strings", got=_got(name))
        if not isinstance(tag_value, str):
            # A tag from a route or a Surrogate-Key header is always text; 1 != "1".
            raise _Invalid("a string (quote numbers and booleans)", at=f".{name}")
        pairs.append((name, tag_value))
    return tuple(pairs)


_HOST_ALONE = "a host name or IP address alone (no scheme, port, path or spaces)"


def _host_problem(host: str) -> bool:
    """True when no resolver takes `host`: a space, a slash, or a colon outside an IPv6
    address (``localhost:6379``, ``redis://localhost``), the usual slips."""
    if any(char.isspace() or char == "/" for char in host):
        return True
    if ":" not in host:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return True
    return False


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or _host_problem(value):
        raise _Invalid(_HOST_ALONE)
    return value


def _url(kind: str, *schemes: str, host: bool = False, spaces: bool = True) -> Parser:
    """`kind` (or null): a URL starting with one of `schemes` that the client can parse.

    redis-py and botocore split URLs with urllib.parse, whose `port` raises on a port that is
    not a number from 0 to 65535: such a URL fails every connection. `host`: a host name is
    required (a ``unix://`` URL needs the socket's path instead); `spaces`: whitespace may
    appear (a redis password in the URL may hold a space).
    """
    prefixes = tuple(f"{scheme}://" for scheme in schemes)

    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.startswith(prefixes):
            raise _Invalid(f"{kind}, or null")
        if not spaces and any(char.isspace() for char in value):
            raise _Invalid(f"{kind} without spaces")
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # an unclosed [IPv6 address]
            raise _Invalid(f"{kind} that parses ({exc})") from None
        try:
            parts.port  # noqa: B018 -- reading the property is the check
        except ValueError:
            raise _Invalid(f"{kind} whose port is a number from 0 to 65535") from None
        if parts.scheme == "unix":
            if not parts.path:
                raise _Invalid(f"{kind} with the socket's path, such as unix:///run/redis.sock")
        elif host and not parts.hostname:
            raise _Invalid(f"{kind} with a host name")
        elif parts.hostname and _host_problem(parts.hostname):
            raise _Invalid(f"{kind} whose host is {_HOST_ALONE}")
        return value

    return _masked(parse)


def _masked(parse: Parser) -> Parser:
    """`parse`, whose errors show the value with any password in it masked, as check-config
    shows it: a URL or DSN may carry one, and errors end up in logs."""

    def masked(value: Any) -> Any:
        try:
            return parse(value)
        except _Invalid as exc:
            if isinstance(value, str):
                exc.got = _Shown(repr(_mask(value)))
            raise

    return masked


def _route_pattern(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("a route pattern such as '/products/{id}'")
    try:
        compile_pattern(value)
    except ValueError as exc:
        raise _Invalid(f"a valid route pattern: {exc}") from None
    return value


# ---- sections: YAML key -> (dataclass field, parser) ------------------------------------------
Keys = dict[str, tuple[str, Parser]]

_UNITS = {"bytes": 1, "kb": KB, "mb": MB, "gb": GB}
_UNIT_WORDS = {"bytes": "bytes", "kb": "kilobytes", "mb": "megabytes", "gb": "gigabytes"}


def _durations(base: str, *, nullable: bool = False, none_means: str = "no limit") -> Keys:
    """`<base>_seconds` and its alias `<base>_hours`, both filling the `<base>_seconds` field."""
    tail = f" or null for {none_means}" if nullable else ""
    return {
        f"{base}_{unit}": (
            f"{base}_seconds",
            _number(f"a number of {unit} >= 0{tail}", scale=scale, nullable=nullable),
        )
        for unit, scale in (("seconds", 1.0), ("hours", HOUR))
    }


def _sizes(base: str, *, nullable: bool = False) -> Keys:
    """`<base>_bytes` and its aliases `<base>_kb`, `_mb`, `_gb` (1 GB = 1024**3 bytes)."""
    return {
        f"{base}_{unit}": (f"{base}_bytes", _size(_UNIT_WORDS[unit], scale, nullable=nullable))
        for unit, scale in _UNITS.items()
    }


@dataclass(frozen=True, slots=True)
class _Section:
    keys: Keys
    required: Mapping[str, str] = field(default_factory=dict)  # key -> what it must hold

    def read(self, value: Any, path: str, source: str) -> dict[str, Any]:
        """The dataclass fields given by one YAML mapping at `path`."""
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(source, path, f"a mapping with keys {self._allowed()}", _got(value))
        out: dict[str, Any] = {}
        given: dict[str, str] = {}
        for key, raw in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            if key not in self.keys:
                raise ConfigError(source, key_path, self._unknown(key))
            name, parse = self.keys[key]
            if name in given:
                raise ConfigError(source, key_path, f"only one of {given[name]} and {key}")
            try:
                out[name] = parse(raw)
            except _Invalid as exc:
                got = exc.got if exc.got is not None else _got(_dig(raw, exc.at))
                raise ConfigError(source, key_path + exc.at, exc.expected, got) from None
            given[name] = key
        for key, expected in self.required.items():
            if key not in value:
                raise ConfigError(source, f"{path}.{key}", expected, _Shown("nothing"))
        return out

    def _allowed(self) -> str:
        return ", ".join(sorted(self.keys))

    def _unknown(self, key: object) -> str:
        close = difflib.get_close_matches(str(key), self.keys, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"one of the keys {self._allowed()}{hint}"


def _dig(value: Any, at: str) -> Any:
    if at and isinstance(value, Mapping):
        return value.get(at.lstrip("."))
    return value


_DRY_PATH = ".tiercache/dry"
_HOT_COLD_BACKENDS = ("ram", "memcached", "redis")
_DRY_BACKENDS = ("local", "s3")
_TRACKING_BACKENDS = ("sqlite", "redis", "postgres")
# The optional client each backend needs: backend -> (module, extra).
_EXTRAS = {
    "memcached": ("aiomcache", "memcached"),
    "redis": ("redis", "redis"),
    "s3": ("aiobotocore", "s3"),
    "postgres": ("asyncpg", "postgres"),
}
# RFC 9651 sf-token: the cache's name in Cache-Status goes out unquoted.
_SF_TOKEN = r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*"
_FIELD_NAME = r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"  # RFC 9110 5.1 token
_SQL_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?"  # table or schema.table
_NO_SPACE = r"\S+"

_PORT = _integer("a port number from 1 to 65535", 1, 65535)
_PATH = _string("a directory or file path")
_OPTIONAL_TEXT = _string("a string or null", nullable=True)

_TIER = {
    "backend": ("backend", _choice(*_HOT_COLD_BACKENDS)),
    "eviction": ("eviction", _choice("sieve", "lru")),
    **_durations("ttl", nullable=True),
    # RAM tiers need a budget: a null here would be an unbounded heap.
    **_sizes("max_size"),
}
_HOT_COLD = _Section(_TIER)
_DRY = _Section(
    {
        "backend": ("backend", _choice(*_DRY_BACKENDS)),
        "path": ("path", _PATH),
        **_durations("ttl", nullable=True, none_means="no expiry"),
        **_sizes("max_size", nullable=True),
    }
)
_TRACKING = _Section(
    {
        "backend": ("backend", _choice(*_TRACKING_BACKENDS)),
        "path": ("path", _PATH),
        **_durations("flush_interval"),
    }
)
_HTTP = _Section(
    {
        "cache_name": ("cache_name", _string("a token such as tiercache", pattern=_SF_TOKEN)),
        **_sizes("max_entry"),
        "targeted_cache_control": (
            "targeted_cache_control",
            _string(
                "a header field name such as Tiercache-Cache-Control, or null",
                pattern=_FIELD_NAME,
                nullable=True,
            ),
        ),
        **_durations("collapse_timeout"),
        "expose_surrogate_keys": ("expose_surrogate_keys", _boolean),
        "debug_key": ("debug_key", _boolean),
        "store_set_cookie": ("store_set_cookie", _boolean),
        "heuristic_fraction": (
            "heuristic_fraction",
            _number("a number from 0 to 1", maximum=1.0),
        ),
        **_durations("heuristic_max"),
        **_durations("default_ttl"),
    }
)
_ROUTE = _Section(
    {
        "pattern": ("pattern", _route_pattern),
        "tags": ("tags", _tags),
        "cache": ("cache", _boolean),
    },
    required={"pattern": "a route pattern such as '/products/{id}'"},
)
_TTL_RULE = _Section(
    {
        "tag": ("tag", _tags),
        "override_origin": ("override_origin", _boolean),
        **_durations("ttl", nullable=True, none_means="none"),
        **_durations("hot_ttl", nullable=True, none_means="the tier's default"),
        **_durations("cold_ttl", nullable=True, none_means="the tier's default"),
        **_durations("dry_ttl", nullable=True, none_means="the tier's default"),
        **_durations("stale_while_revalidate", nullable=True, none_means="none"),
        **_durations("stale_if_error", nullable=True, none_means="none"),
    }
)
_REDIS = _Section(
    {
        "host": ("host", _host),
        "port": ("port", _PORT),
        "db": ("db", _integer("a database number >= 0", 0, 2**31 - 1)),
        "url": ("url", _url("a redis://, rediss:// or unix:// URL", "redis", "rediss", "unix")),
        "password": ("password", _OPTIONAL_TEXT),
        "prefix": ("prefix", _string("a key prefix without spaces", pattern=_NO_SPACE, empty=True)),
    }
)
_MEMCACHED = _Section(
    {
        "host": ("host", _host),
        "port": ("port", _PORT),
        # memcached keys may hold no whitespace or control characters.
        "prefix": ("prefix", _string("a key prefix without spaces", pattern=_NO_SPACE, empty=True)),
    }
)
_S3 = _Section(
    {
        "endpoint_url": (
            "endpoint_url",
            _url("an http:// or https:// URL", "http", "https", host=True, spaces=False),
        ),
        "bucket": ("bucket", _string("a bucket name", pattern=r"[^/\s]+")),
        "region": ("region", _OPTIONAL_TEXT),
        "access_key": ("access_key", _OPTIONAL_TEXT),
        "secret_key": ("secret_key", _OPTIONAL_TEXT),
        "prefix": ("prefix", _string("a key prefix", empty=True)),
    }
)
_POSTGRES = _Section(
    {
        # asyncpg takes only the URL form: "host=... dbname=..." fails every connection.
        "dsn": (
            "dsn",
            _masked(_string("a postgresql:// or postgres:// DSN", pattern=r"postgres(?:ql)?://.*")),
        ),
        "table": ("table", _string("a table name such as tiercache_index", pattern=_SQL_NAME)),
    }
)
_TOP = _Section(
    {
        name: (name, lambda value: value)
        for name in (
            "hot_cache",
            "cold_cache",
            "dry_cache",
            "tracking",
            "http",
            "routes",
            "ttl_rules",
            "redis",
            "memcached",
            "s3",
            "postgres",
        )
    }
)


def _read_list(value: Any, path: str, section: _Section, source: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(source, path, "a list of mappings", _got(value))
    return [section.read(item, f"{path}[{index}]", source) for index, item in enumerate(value)]


def _build(data: object, source: str, base_dir: Path) -> Config:
    if not isinstance(data, Mapping):
        expected = f"a mapping of sections ({_TOP._allowed()}) at the top level"
        raise ConfigError(source, "", expected, _got(data))
    _TOP.read(data, "", source)  # unknown top-level keys
    defaults = Config(base_dir=base_dir)
    hot = replace(defaults.hot, **_HOT_COLD.read(data.get("hot_cache"), "hot_cache", source))
    cold = replace(defaults.cold, **_HOT_COLD.read(data.get("cold_cache"), "cold_cache", source))
    dry_fields = _DRY.read(data.get("dry_cache"), "dry_cache", source)
    dry = replace(defaults.dry, **dry_fields)
    tracking_fields = _TRACKING.read(data.get("tracking"), "tracking", source)
    tracking = replace(defaults.tracking, **tracking_fields)
    http = replace(defaults.http, **_HTTP.read(data.get("http"), "http", source))
    routes = tuple(
        RouteRule(**fields_, regex=compile_pattern(fields_["pattern"]))
        for fields_ in _read_list(data.get("routes"), "routes", _ROUTE, source)
    )
    ttl_rules = []
    for index, fields_ in enumerate(
        _read_list(data.get("ttl_rules"), "ttl_rules", _TTL_RULE, source)
    ):
        if fields_.get("override_origin") and fields_.get("ttl_seconds") is None:
            raise ConfigError(
                source,
                f"ttl_rules[{index}].override_origin",
                "ttl_seconds beside override_origin: true (the freshness that overrides)",
            )
        ttl_rules.append(TtlRule(**{"tag": (), **fields_}))

    def optional(name: str, section: _Section, default: Any) -> Any:
        return replace(default, **section.read(data[name], name, source)) if name in data else None

    redis: RedisConfig | None = optional("redis", _REDIS, RedisConfig())
    memcached: MemcachedConfig | None = optional("memcached", _MEMCACHED, MemcachedConfig())
    s3: S3Config | None = optional("s3", _S3, S3Config())
    postgres: PostgresConfig | None = optional("postgres", _POSTGRES, PostgresConfig())

    # A backend named without its section runs on that section's defaults (localhost).
    backends = {hot.backend, cold.backend, dry.backend, tracking.backend}
    if redis is None and "redis" in backends:
        redis = RedisConfig()
    if memcached is None and "memcached" in backends:
        memcached = MemcachedConfig()
    if postgres is None and "postgres" in backends:
        postgres = PostgresConfig()
    if dry.backend == "s3" and (s3 is None or not s3.bucket):
        raise ConfigError(source, "s3.bucket", "a bucket name, since dry_cache.backend is s3")

    config = Config(
        hot=hot,
        cold=cold,
        dry=replace(dry, path=_absolute(dry.path or _DRY_PATH, base_dir)),
        tracking=replace(tracking, path=_absolute(tracking.path, base_dir)),
        http=http,
        routes=routes,
        ttl_rules=tuple(ttl_rules),
        redis=redis,
        memcached=memcached,
        s3=s3,
        postgres=postgres,
        source=source,
        base_dir=base_dir,
    )
    _check_extras(config, source)
    _check_local_paths(config, dry_fields.get("path"), tracking_fields.get("path"), source)
    return config


def _absolute(path: str, base_dir: Path) -> str:
    return os.path.normpath(base_dir / Path(path).expanduser())


# ---- local paths: refused at load when no write there could ever succeed ---------------------
# Writes are allowed or refused by the effective user, so ask the kernel about that one.
_EFFECTIVE_IDS = os.access in os.supports_effective_ids
_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _check_local_paths(
    config: Config, dry_path: str | None, tracking_path: str | None, source: str
) -> None:
    """Fail at load, not with a log line on every write, when a path set in the config can
    never work for the backend that uses it.

    Only looks (stat, access, 16 bytes of an existing sqlite file): loading creates nothing;
    the dry tier makes its directory on its first write, sqlite its file on first use. Paths
    left at their defaults are not checked, so `TierCache()` still starts in a read-only
    working directory (its dry writes fail, logged and counted, as before).
    """
    if dry_path is not None and config.dry.backend == "local":
        problem = _directory_problem(_absolute(dry_path, config.base_dir))
        if problem is not None:
            expected = "a directory this process can create or write in"
            got = _Shown(f"{dry_path!r} ({problem})")
            raise ConfigError(source, "dry_cache.path", expected, got)
    if tracking_path is not None and config.tracking.backend == "sqlite":
        problem = _sqlite_file_problem(_absolute(tracking_path, config.base_dir))
        if problem is not None:
            expected = "an SQLite file this process can create or write"
            got = _Shown(f"{tracking_path!r} ({problem})")
            raise ConfigError(source, "tracking.path", expected, got)


def _directory_problem(path: str, *, itself: str = "it") -> str | None:
    """Why `os.makedirs(path, exist_ok=True)` then a write inside it must fail, or None.

    That needs the nearest existing entry on the way up to be a directory this process may
    write in and search; `path` itself if it exists, named `itself` in the answer.
    """
    existing = path
    while True:
        try:
            os.lstat(existing)
            break
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            # Missing, under a file, or under a directory we may not search: look higher;
            # the entry found there says why.
            existing = os.path.dirname(existing)  # "/" always exists: the loop ends
        except OSError as exc:
            return f"{existing} cannot be looked up: {exc.strerror}"
    named = itself if existing == path else existing
    try:
        mode = os.stat(existing).st_mode
    except OSError as exc:
        return f"{named} is a symlink that cannot be followed: {exc.strerror}"
    if not stat.S_ISDIR(mode):
        return f"{named} is {'a file' if stat.S_ISREG(mode) else 'not a directory'}"
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE_IDS):
        return f"{named} is a directory this process may not write in"
    return None


def _sqlite_file_problem(path: str) -> str | None:
    """Why sqlite could never open `path` for writing, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        # Not there yet: sqlite creates it, so its directory must be creatable and writable.
        directory = os.path.dirname(path)
        return _directory_problem(directory, itself=directory)
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if not stat.S_ISREG(mode):
        return "it is not a regular file"
    if not os.access(path, os.R_OK | os.W_OK, effective_ids=_EFFECTIVE_IDS):
        return "it is a file this process may not write"
    if _holds_other_data(path):
        return "it is a file that is not an SQLite database"
    # An existing database's directory is not checked: another process may hold its -wal
    # and -shm files open, and then this one needs no right to create them.
    return None


def _holds_other_data(path: str) -> bool:
    """True when the file begins with 16 bytes that are not SQLite's header, nor a header
    another process is writing this moment (a prefix of it, then zeros)."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(_SQLITE_HEADER))
    except OSError:
        return False  # unreadable is reported by access() above, or gone: not ours to judge
    return len(head) == len(_SQLITE_HEADER) and not _SQLITE_HEADER.startswith(head.rstrip(b"\0"))


def _check_extras(config: Config, source: str) -> None:
    """Fail at load, not at first request, when a backend's client library is missing."""
    used = [
        ("hot_cache.backend", config.hot.backend),
        ("cold_cache.backend", config.cold.backend),
        ("dry_cache.backend", config.dry.backend),
        ("tracking.backend", config.tracking.backend),
    ]
    if config.redis is not None:
        used.append(("redis", "redis"))  # the purge bus runs on redis whenever it is set
    for key_path, backend in used:
        if backend in _EXTRAS:
            module, extra = _EXTRAS[backend]
            # find_spec looks the module up without importing it (and its import cost).
            if importlib.util.find_spec(module) is None:
                raise MissingExtraError(source, key_path, backend, extra)


# ---- describing --------------------------------------------------------------------------------
def describe_config(config: Config) -> str:
    """The effective configuration as text (for `tiercache-mw check-config`); secrets masked."""
    hot, cold, dry, tracking = config.hot, config.cold, config.dry, config.tracking
    lines = [
        f"source:     {config.source}",
        f"hot_cache:  {hot.backend}, residency {_seconds(hot.ttl_seconds)}, "
        f"max {_bytes(hot.max_size_bytes)}"
        + (f", eviction {hot.eviction}" * (hot.backend == "ram")),
        f"cold_cache: {cold.backend}, residency {_seconds(cold.ttl_seconds)}, "
        f"max {_bytes(cold.max_size_bytes)}"
        + (f", eviction {cold.eviction}" * (cold.backend == "ram")),
        f"dry_cache:  {dry.backend}"
        + (f" at {dry.path}" * (dry.backend == "local"))
        + f", expiry {_seconds(dry.ttl_seconds)}, max {_bytes(dry.max_size_bytes)}",
        f"tracking:   {tracking.backend}"
        + (f" at {tracking.path}" * (tracking.backend == "sqlite"))
        + f", writes batched for up to {_seconds(tracking.flush_interval_seconds)}",
    ]
    lines.append("http:")
    lines.extend(f"  {f.name}: {_scalar(getattr(config.http, f.name))}" for f in fields(HttpConfig))
    redis = config.redis
    if redis is None:
        lines.append("redis:      not configured: purges stay in this process")
    else:
        where = _mask(redis.url) if redis.url else f"redis://{redis.host}:{redis.port}/{redis.db}"
        secret = ", password ***" if redis.password else ""
        lines.append(f"redis:      {where}{secret}, prefix {redis.prefix!r}, purges broadcast")
    if config.memcached is not None:
        mc = config.memcached
        lines.append(f"memcached:  {mc.host}:{mc.port}, prefix {mc.prefix!r}")
    if config.s3 is not None:
        s3 = config.s3
        credentials = "keys from config" if s3.access_key else "keys from the AWS environment"
        lines.append(
            f"s3:         bucket {s3.bucket!r} at {s3.endpoint_url or 'AWS'}, "
            f"region {s3.region or 'default'}, prefix {s3.prefix!r}, {credentials}"
        )
    if config.postgres is not None:
        lines.append(f"postgres:   {_mask(config.postgres.dsn)}, table {config.postgres.table}")

    if config.routes:
        lines.append("routes (first match wins):")
        width = max(len(rule.pattern) for rule in config.routes)
        for number, rule in enumerate(config.routes, 1):
            does = "cache: false (bypass)" if not rule.cache else "cached"
            tags = f", tags {_pairs(rule.tags)}" if rule.tags else ""
            lines.append(f"  {number}. {rule.pattern:<{width}}  {does}{tags}")
    else:
        lines.append("routes: none (every path may be cached)")
    if config.ttl_rules:
        lines.append("ttl_rules (first match on the entry's tags wins):")
        for number, ttl_rule in enumerate(config.ttl_rules, 1):
            lines.append(
                f"  {number}. {_pairs(ttl_rule.tag) or '(every entry)'}: {_rule(ttl_rule)}"
            )
    else:
        lines.append("ttl_rules: none")
    return "\n".join(lines)


def _rule(rule: TtlRule) -> str:
    parts = []
    if rule.ttl_seconds is not None:
        when = "always" if rule.override_origin else "when the response sets none"
        parts.append(f"ttl {_seconds(rule.ttl_seconds)} ({when})")
    for tier in ("hot", "cold", "dry"):
        value = getattr(rule, f"{tier}_ttl_seconds")
        if value is not None:
            parts.append(f"{tier} residency {_seconds(value)}")
    if rule.stale_while_revalidate_seconds is not None:
        parts.append(f"stale-while-revalidate {_seconds(rule.stale_while_revalidate_seconds)}")
    if rule.stale_if_error_seconds is not None:
        parts.append(f"stale-if-error {_seconds(rule.stale_if_error_seconds)}")
    return ", ".join(parts) or "nothing set"


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _pairs(tags: Tags) -> str:
    return " ".join(f"{name}={value}" for name, value in tags)


def _seconds(value: float | None) -> str:
    if value is None:
        return "none"
    if value >= HOUR and value % HOUR == 0:
        return f"{value / HOUR:g} h"
    return f"{value:g} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "unlimited"
    for unit, size in (("GB", GB), ("MB", MB), ("KB", KB)):
        if value >= size:
            return f"{value / size:.4g} {unit}"
    return f"{value} bytes"


def _mask(text: str) -> str:
    """`text` with the password of a URL (``//user:***@``) or of a key=value DSN hidden."""
    # To the last "@": a password may hold "@" or "/" (unquoted, as in a malformed URL).
    text = re.sub(r"(//[^:/@]*:).*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
