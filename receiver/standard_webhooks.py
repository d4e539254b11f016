"""Standard Webhooks (standardwebhooks.com): signing what we send, verifying what we get.

The signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 keyed
with the base64 secret after its `whsec_` prefix. `webhook-signature` carries one or
more space-separated `v1,<base64>` values so senders can rotate keys; a receiver may
also hold several secrets during its own rotation. Verification works on the raw
bytes as they arrived, never on a re-serialized body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "SignatureError",
    "decode_secret",
    "headers_for",
    "mint_whsec",
    "sign",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds, both ways, as the specification recommends
_MAX_SIGNATURES = 16  # a header with more is an attack, not a rotation


class SignatureError(Exception):
    """A request whose Standard Webhooks headers do not prove it; the text is safe to log."""


def mint_whsec() -> str:
    """A new secret: 256 random bits in the `whsec_` form every library accepts."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def decode_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_...` (or bare base64) secret; ValueError when it is not one."""
    body = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret is base64 after 'whsec_'") from exc
    if len(key) < 16:
        raise ValueError("a Standard Webhooks secret must hold at least 128 bits")
    return key


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    mac = _mac(decode_secret(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(mac).decode()


def headers_for(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """The three headers a sender adds to `body`."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    keys: Iterable[bytes],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check `body` against its headers with any of `keys`; return the `webhook-id`.

    `headers` must have lower-case names. Every offered signature is compared with
    every key in constant time, so timing does not say which key or signature matched.
    """
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    offered = headers.get("webhook-signature", "")
    if not (msg_id and stamp and offered):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError("webhook-timestamp is not Unix seconds")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise SignatureError("webhook-timestamp is too old")
    if timestamp > current + tolerance:
        raise SignatureError("webhook-timestamp is in the future")
    candidates = []
    for item in offered.split(" ")[:_MAX_SIGNATURES]:
        version, _, encoded = item.partition(",")
        if version != "v1":
            continue
        try:
            candidates.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    matched = False
    for key in keys:
        expected = _mac(key, msg_id, timestamp, body)
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no webhook-signature matches")
    return msg_id
