"""What a refused hook request costs its caller, and what is kept of it.

Every 4xx a hook route answers, whatever the reason (a wrong secret, an unknown token, a
bad body, a body too large, a wrong method), takes one from the failure budget of the
client's address and, on a job's own URL, of its token (see receiver.ratelimit). So a
flood of any kind of refusal meets 429 after RECEIVER_AUTH_FAILURE_BURST, and a 429 writes
nothing. The hook routes (receiver.hooks) ask here.

The copy kept in the quarantine is capped: the request's headers, path and query as
`receiver.callbacks.kept_request` caps them, and its body to a few KiB unless the caller
proved itself. The table keeps the newest RECEIVER_QUARANTINE_MAX_ROWS rows: the oldest
are deleted in small batches every few inserts, so no insert pays for a big delete.
"""

from __future__ import annotations

import logging

from receiver.callbacks import Reject, capped
from receiver.errors import StoreUnavailable
from receiver.models import Quarantined, RawRequest, new_id
from receiver.ratelimit import FailureLimiter, client_key
from receiver.store.base import Store
from receiver.verify import digest

__all__ = [
    "PROVEN_BODY_BYTES",
    "UNPROVEN_BODY_BYTES",
    "Quarantine",
    "address_wait",
    "charge",
    "quarantined",
    "token_of",
]

log = logging.getLogger("receiver.hooks")

# A rejected body is kept up to 64 KiB when the caller proved itself (a 400 comes only after
# the token or secret was checked: diagnosis needs the body), and only its start otherwise,
# so guessing tokens cannot fill the disk.
PROVEN_BODY_BYTES = 64 * 1024
UNPROVEN_BODY_BYTES = 4 * 1024
_PROVIDER_CHARS = 64  # the provider as named in the path: anything, when it is unknown
# Trim after every this many inserts (a tenth of the cap, at most 100), this many rows at most.
_TRIM_EVERY = 100
_TRIM_BATCH = 1000


def _address_key(address: str | None) -> str | None:
    return f"ip:{client_key(address)}" if address else None


def address_wait(limiter: FailureLimiter, address: str | None, at: float) -> int | None:
    """Seconds `address` must wait before a hook route does any work for it; None: go on."""
    return limiter.retry_after(_address_key(address), at)


def charge(
    limiter: FailureLimiter, address: str | None, token: str | None, at: float
) -> int | None:
    """Count one refusal against the address and the token (when the URL has one).

    Returns the seconds to wait when the token's budget was already spent: then the answer
    is 429 and nothing is kept, while a request that proves itself still goes through.
    """
    token_key = f"token:{digest(token)}" if token else None
    limiter.failed(_address_key(address), at)
    wait = limiter.retry_after(token_key, at)
    limiter.failed(token_key, at)
    return wait


def token_of(path: str) -> str | None:
    """The token of a job's own URL, `/hooks/{provider}/{token}`; None for any other path."""
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "hooks" and parts[2] and parts[3]:
        return parts[3]
    return None


def quarantined(raw: RawRequest, reject: Reject) -> Quarantined:
    """The capped copy of a refused request that the quarantine keeps."""
    limit = PROVEN_BODY_BYTES if reject.status_code == 400 else UNPROVEN_BODY_BYTES
    return Quarantined(
        id=new_id("qua"),
        received_at=raw.received_at,
        provider=capped(raw.provider, _PROVIDER_CHARS),
        reason=f"{reject.reason}: {reject.detail}" if reject.detail else reject.reason,
        status_code=reject.status_code,
        method=raw.method,
        path=raw.path,
        query=raw.query,
        headers=raw.headers,
        body=raw.body[:limit],
        client=raw.client,
    )


class Quarantine:
    """Keeps refused requests, capped, and the table near `max_rows` rows."""

    def __init__(self, store: Store, *, max_rows: int):
        self.store = store
        self.max_rows = max_rows
        # Between trims the table can pass the cap by `every` rows per process: a tenth.
        self.every = max(1, min(_TRIM_EVERY, max_rows // 10))
        self._inserts = 0

    async def keep(self, raw: RawRequest, reject: Reject) -> None:
        """Write the copy of a refused request; a store that is down loses only the copy."""
        # The first insert trims too, so a table left over the cap is brought down from start.
        due = self._inserts % self.every == 0
        self._inserts += 1
        try:
            await self.store.quarantine(quarantined(raw, reject))
        except StoreUnavailable as exc:
            # The rejection stands; only the diagnosis copy is lost.
            log.warning("could not quarantine a rejected request: %s", exc)
            return
        if due:
            try:
                await self.store.trim_quarantine(keep=self.max_rows, batch=_TRIM_BATCH)
            except StoreUnavailable as exc:
                log.warning("could not trim the quarantine (the next trim will): %s", exc)
