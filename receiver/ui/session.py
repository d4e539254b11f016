"""Dashboard sessions: the admin token is sent once, for a random session id kept in a cookie.

The id is 256 random bits: it says nothing about the time or the token, and two logins
never share one. The store keeps only an HMAC of it keyed by the admin token's digest,
so a copy of the database holds no usable cookie and a new admin token ends every
session; the row, shared by every receiver on one database, is deleted at logout and
ignored once `RECEIVER_SESSION_TTL` seconds have passed since login. Form posts also
carry a CSRF value bound to the session. Every comparison is made in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.store import Store

__all__ = ["COOKIE", "csrf_token", "csrf_valid", "end_session", "session_alive", "start_session"]

COOKIE = "receiver_session"
_MAX_COOKIE = 100  # an id is 43 characters; anything much longer is not one of ours


def _sign(key: str, purpose: str, value: str) -> str:
    return hmac.new(key.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


async def start_session(store: Store, key: str, *, at: float, ttl: float) -> str:
    """A new session's cookie value, kept until `at + ttl`; `key` is the admin token's digest."""
    session = secrets.token_urlsafe(32)
    await store.create_session(_sign(key, "session", session), at=at, expires_at=at + ttl)
    return session


async def session_alive(store: Store, key: str, value: str | None, *, at: float) -> bool:
    """Whether `value` is a session started with `key`, not ended and not expired."""
    if not value or len(value) > _MAX_COOKIE:
        return False
    return await store.session_alive(_sign(key, "session", value), at=at)


async def end_session(store: Store, key: str, value: str) -> None:
    """Forget the session: its cookie no longer works anywhere."""
    await store.delete_session(_sign(key, "session", value))


def csrf_token(key: str, session: str) -> str:
    """The value a form must send back: bound to this session, useless without it."""
    return _sign(key, "csrf", session)


def csrf_valid(key: str, session: str | None, offered: str | None) -> bool:
    if not session or not offered:
        return False
    return hmac.compare_digest(csrf_token(key, session), offered)
