"""Reading raw ASGI-style header lists: `list[tuple[bytes, bytes]]` with lowercase names.

The policy modules read a handful of fields per response; a linear scan over a short list is
cheaper than building a mapping (starlette `Headers` would also scan, and needs lowercase names
anyway, see STYLE.md).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "connection_fields",
    "get_all",
    "get_header",
    "get_list",
    "split_list",
]

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: connection-specific fields a cache neither stores nor forwards.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def get_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of field `name` (lowercase bytes), or None when absent."""
    for key, value in headers:
        if key == name:
            return value
    return None


def get_all(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of field `name`, in order."""
    return [value for key, value in headers if key == name]


def get_list(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """All lines of a list-valued field joined with ", " (RFC 9110 §5.3), or None when absent."""
    values = get_all(headers, name)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return b", ".join(values)


def split_list(value: bytes | str) -> list[str]:
    """The members of a comma-separated list without quoting (Vary, Connection, Cache-Tag):
    stripped, empty members dropped (RFC 9110 §5.6.1 allows them)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return [part.strip() for part in text.split(",") if part.strip()]


def connection_fields(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Hop-by-hop fields: the fixed ones plus those named in Connection (RFC 9110 §7.6.1)."""
    named = get_list(headers, b"connection")
    if named is None:
        return HOP_BY_HOP
    return HOP_BY_HOP | {name.lower().encode("latin-1") for name in split_list(named)}
