"""Credentials: minting per-job tokens and secrets, hashing them, comparing in constant time.

Tokens and secrets are 256-bit random values, so a plain SHA-256 is enough to store them:
there is nothing to brute-force. Comparisons are made between digests with
`hmac.compare_digest`, so timing reveals nothing about the stored value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "SECRET_HEADERS",
    "digest",
    "matches",
    "matches_any",
    "matches_digests",
    "mint_secret",
    "mint_token",
    "redact_fields",
    "redact_headers",
    "redact_path",
    "redact_query",
    "redact_value",
    "secret_name",
]

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "x-webhook-secret",
        "authorization",
        "cookie",
        "x-api-key",
        "proxy-authorization",
        "webhook-signature",  # Standard Webhooks: a valid one replays within the tolerance
        "svix-signature",  # the same, as Svix names it
    }
)


def mint_token() -> str:
    """A per-job URL token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def mint_secret() -> str:
    """A per-job webhook secret: 256 random bits, hex so every provider accepts it."""
    return secrets.token_hex(32)


def digest(value: str) -> str:
    """The stored form of a token or secret."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def matches(candidate: str | None, stored_digest: str | None) -> bool:
    """Whether `candidate` hashes to `stored_digest`, compared in constant time."""
    if candidate is None or not stored_digest:
        return False
    return hmac.compare_digest(digest(candidate), stored_digest)


def matches_digests(candidate: str | None, stored_digests: Iterable[str | None]) -> bool:
    """Whether `candidate` hashes to any of `stored_digests`; every one is compared, so
    timing tells nothing about which (if any) matched."""
    if candidate is None:
        return False
    hashed = digest(candidate)
    found = False
    for stored in stored_digests:
        if stored and hmac.compare_digest(hashed, stored):
            found = True
    return found


def matches_any(candidate: str | None, secrets_: Iterable[str | None]) -> bool:
    """Whether `candidate` equals any configured plain secret; every one is compared."""
    return matches_digests(candidate, [digest(secret) for secret in secrets_ if secret])


# One rule for every name a credential can travel under (headers, payload fields): matched
# on the name lowercased with `-` read as `_`, so `X-Webhook-Secret`, `x_webhook_secret` and
# `X_WEBHOOK_SECRET` are one name. It covers every name in SECRET_HEADERS.
_SECRET_NAME = re.compile(r"token|secret|password|api_?key|authorization|signature|cookie")


def secret_name(name: str) -> bool:
    """Whether a header or field called `name` carries a credential, however it is spelt."""
    # Names of usual length are remembered: a callback's dozen headers are checked on the
    # hot path. Longer ones (a caller's invention) are checked each time, not kept.
    return _known_secret_name(name) if len(name) <= 64 else _is_secret_name(name)


def _is_secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name.lower().replace("-", "_")) is not None


_known_secret_name = functools.lru_cache(maxsize=1024)(_is_secret_name)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with credentials replaced, for the raw-request and quarantine tables."""
    return {name: (REDACTED if secret_name(name) else value) for name, value in headers.items()}


def redact_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of user-supplied fields with anything named like a credential replaced."""
    redacted: dict[str, Any] = redact_value(fields)
    return redacted


def redact_value(value: Any) -> Any:
    """A copy of a decoded JSON value with credentials replaced, at any depth, lists included.

    Walked with a stack, not recursion: a body nested as deep as the decoder allows must
    not overflow Python's stack here.
    """
    top: list[Any] = [None]
    pending: list[tuple[Any, Any, Any]] = [(value, top, 0)]  # (value, its copy's parent, slot)
    while pending:
        item, parent, slot = pending.pop()
        copy: Any = item
        if isinstance(item, Mapping):
            copy = {}
            for key, child in item.items():
                if secret_name(str(key)):
                    copy[key] = REDACTED
                else:
                    copy[key] = None  # a place kept in order, filled when `child` is taken
                    pending.append((child, copy, key))
        elif isinstance(item, list | tuple):
            copy = [None] * len(item)
            pending.extend((child, copy, index) for index, child in enumerate(item))
        parent[slot] = copy
    return top[0]


_HOOK_PATH = re.compile(r"^(/hooks/[^/]+/)([^/?]+)")


def redact_path(path: str) -> str:
    """`/hooks/p/<token>` with the token replaced by a short digest, so rows can be correlated."""
    return _HOOK_PATH.sub(lambda m: f"{m.group(1)}[token:{digest(m.group(2))[:12]}]", path)


_SECRET_QUERY = re.compile(
    r"((?:^|[?&;])[^=&?;]*(?:token|secret|key|signature|password|auth)[^=&?;]*=)[^&?;]*", re.I
)


def redact_query(query: str) -> str:
    """A query string with anything named like a credential replaced."""
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, query)
