"""Standard Webhooks (standardwebhooks.com): signing what we send, verifying what we get.

The signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 keyed
with the base64 secret after its `whsec_` prefix. `webhook-signature` carries one or
more space-separated `v1,<base64>` values so senders can rotate keys; a receiver may
also hold several secrets during its own rotation. Verification works on the raw
bytes as they arrived, never on a re-serialized body.

Svix, which wrote the specification, sends the same three headers named `svix-id`,
`svix-timestamp` and `svix-signature`; its own library accepts either spelling, and so
do we, the same way: the three `svix-*` headers when all are present, else the three
`webhook-*` ones. The three are never mixed across families.

A refusal says why in `SignatureError.reason`: a header missing, a timestamp too old or
too new (with the skew, so clock drift can be told from a wrong secret), a timestamp that
is not Unix seconds, or no signature that matches.
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
    "BAD_SIGNATURE",
    "BAD_TIMESTAMP",
    "DEFAULT_TOLERANCE",
    "FUTURE_SIGNATURE",
    "HEADER_FAMILIES",
    "MISSING_SIGNATURE",
    "SECRET_PREFIX",
    "STALE_SIGNATURE",
    "SignatureError",
    "decode_secret",
    "headers_for",
    "mint_whsec",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds, both ways, as the specification recommends
_MAX_SIGNATURES = 16  # a header with more is an attack, not a rotation


# Why a message was refused: the quarantine's reason, and the hook metrics' outcome.
MISSING_SIGNATURE = "missing_signature"  # one of the three headers absent or empty
BAD_TIMESTAMP = "bad_timestamp"  # the timestamp is not Unix seconds
STALE_SIGNATURE = "stale_signature"  # the timestamp is older than the tolerance
FUTURE_SIGNATURE = "future_signature"  # the timestamp is further ahead than the tolerance
BAD_SIGNATURE = "bad_signature"  # no offered signature matches any key

# The header names, Svix's first: its library tries them first when all three are present.
HEADER_FAMILIES = (
    ("svix-id", "svix-timestamp", "svix-signature"),
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
)


class SignatureError(Exception):
    """A request whose Standard Webhooks headers do not prove it; the text is safe to log.

    `reason` is one of the reasons above; `skew` is, for a timestamp outside the
    tolerance, how many seconds it is ahead of this clock (negative: behind).
    """

    def __init__(self, message: str, *, reason: str = BAD_SIGNATURE, skew: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.skew = skew


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


def signature_headers(headers: Mapping[str, str]) -> tuple[str, str, str]:
    """The id, timestamp and signature from one family of headers (lower-case names).

    The `svix-*` family when all three are present and not empty, else the `webhook-*`
    family, as Svix's library reads them; otherwise SignatureError naming what is absent.
    """
    for names in HEADER_FAMILIES:
        msg_id, stamp, offered = (headers.get(name, "") for name in names)
        if msg_id and stamp and offered:
            return msg_id, stamp, offered
    # Name the absent headers of the family the sender seems to use.
    svix, standard = HEADER_FAMILIES
    names = svix if any(headers.get(name) for name in svix) else standard
    absent = ", ".join(name for name in names if not headers.get(name))
    raise SignatureError(f"missing {absent}", reason=MISSING_SIGNATURE)


def verify(
    body: bytes,
    headers: Mapping[str, str],
    keys: Iterable[bytes],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check `body` against its headers with any of `keys`; return the message id.

    `headers` must have lower-case names (see `signature_headers` for which are read).
    Every offered signature is compared with every key in constant time, so timing does
    not say which key or signature matched.
    """
    msg_id, stamp, offered = signature_headers(headers)
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError("webhook-timestamp is not Unix seconds", reason=BAD_TIMESTAMP)
    timestamp = int(stamp)
    current = time.time() if now is None else now
    skew = round(timestamp - current)
    if timestamp < current - tolerance:
        raise SignatureError(
            f"webhook-timestamp is too old: {-skew} s behind", reason=STALE_SIGNATURE, skew=skew
        )
    if timestamp > current + tolerance:
        raise SignatureError(
            f"webhook-timestamp is in the future: {skew} s ahead",
            reason=FUTURE_SIGNATURE,
            skew=skew,
        )
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
        raise SignatureError("no webhook-signature matches", reason=BAD_SIGNATURE)
    return msg_id
