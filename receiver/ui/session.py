"""Dashboard sessions: the admin token is sent once, and a cookie derived from it is kept.

The cookie holds when it was issued and an HMAC of that time, keyed by the admin token's
digest: it never contains the token, it stops working when the token changes, and it
expires after `SESSION_AGE`. Form posts also carry a CSRF value bound to the session.
Every comparison is made in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["COOKIE", "SESSION_AGE", "csrf_token", "csrf_valid", "new_session", "session_valid"]

COOKIE = "receiver_session"
SESSION_AGE = 12 * 3600


def _sign(key: str, purpose: str, value: str) -> str:
    return hmac.new(key.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def new_session(key: str, *, at: float | None = None) -> str:
    """A cookie value for a session starting now; `key` is the admin token's digest."""
    issued = str(int(time.time() if at is None else at))
    return f"{issued}.{_sign(key, 'session', issued)}"


def session_valid(key: str, value: str | None, *, at: float | None = None) -> bool:
    """Whether `value` is a session made with `key` and not yet expired."""
    if not value:
        return False
    issued, _, signature = value.partition(".")
    if not issued.isdigit() or len(issued) > 12:
        return False
    expected = _sign(key, "session", issued)
    fresh = 0 <= (time.time() if at is None else at) - int(issued) < SESSION_AGE
    return hmac.compare_digest(expected, signature) and fresh


def csrf_token(key: str, session: str) -> str:
    """The value a form must send back: bound to this session, useless without it."""
    return _sign(key, "csrf", session)


def csrf_valid(key: str, session: str | None, offered: str | None) -> bool:
    if not session or not offered:
        return False
    return hmac.compare_digest(csrf_token(key, session), offered)
