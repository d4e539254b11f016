"""The simulator's knobs: which keys it expects and how its providers misbehave."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

__all__ = ["SimConfig", "update_config"]


class SimConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the simulated providers behave; each task keeps the configuration it was created under.

    `api_keys` maps a provider name to the key it expects (missing: any non-empty key is
    accepted). `step_delay` is the time between status changes; `fail` ends jobs failed;
    `duplicate` sends every callback twice; `late` sends one more progress callback after
    the final one; `lose` never calls back; `wrapped` wraps rixapi callbacks in
    `{code, msg, data}`; `create_error` makes create calls answer that HTTP status
    (with `create_retry_after` as Retry-After; for the next `create_error_times` calls
    only, when set);
    `create_delay` holds a create answer back while its task already runs (so callbacks
    can arrive before the receiver knows the task id); `no_preview` gives results no
    preview; `status_error`, `status_retry_after` and `status_delay` make status APIs
    misbehave; `expire_results` makes the first that many result URLs of each task answer
    `expire_status` (a link past its expiry), and the status API renew a succeeded task's
    URLs once one of them has been refused.
    """

    api_keys: dict[str, str] = msgspec.field(default_factory=dict)
    step_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.05
    fail: bool = False
    duplicate: bool = False
    late: bool = False
    lose: bool = False
    wrapped: bool = False
    create_error: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    create_retry_after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    create_error_times: Annotated[int, msgspec.Meta(ge=1)] | None = None
    create_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    no_preview: bool = False
    callback_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Status API faults (every provider): answer this HTTP status, with this Retry-After,
    # and/or only after this many seconds.
    status_error: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    status_retry_after: Annotated[int, msgspec.Meta(ge=0)] | None = None
    status_delay: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Result URLs that have expired: how many generations of them, and what they answer.
    expire_results: Annotated[int, msgspec.Meta(ge=0)] = 0
    expire_status: Annotated[int, msgspec.Meta(ge=400, le=499)] = 410


def update_config(config: SimConfig, patch: Mapping[str, Any]) -> SimConfig:
    """Apply a partial update in place, all or nothing; msgspec.ValidationError on a bad value."""
    checked = msgspec.convert(msgspec.structs.asdict(config) | dict(patch), SimConfig)
    for name in SimConfig.__struct_fields__:
        setattr(config, name, getattr(checked, name))
    return config
