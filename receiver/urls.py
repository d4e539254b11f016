"""Checking a configured URL without an HTTP client: importing httpx costs a cold start
about a tenth of a second, and settings are read before anything is sent."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

__all__ = ["http_url"]


def http_url(value: object) -> SplitResult | None:
    """`value` split, if it is an absolute http(s) URL with a host; else None.

    Whitespace and control characters are refused anywhere, as an HTTP client would
    refuse them when the URL is used, and so is a port that is not a number in range.
    """
    if not isinstance(value, str) or any(ch.isspace() or not ch.isprintable() for ch in value):
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError when the port is not a number in range)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return parts
