"""The admin API's bodies, shared by its routes (receiver.api) and the CLI's client.

Kept apart from the routes so that the CLI loads without the web framework.
"""

from __future__ import annotations

from typing import Any

import msgspec

from receiver.costs import Spend
from receiver.models import Delivery, DeliveryState, Event, Job, Quarantined, RawRequest

__all__ = [
    "DeliveryList",
    "ErrorBody",
    "EventList",
    "JobList",
    "QuarantineList",
    "ReplayRequest",
    "RequestList",
    "SpendList",
    "SubmitRequest",
    "replay_states",
]


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error answer (see receiver.app): what went wrong and, for invalid input, where."""

    error: str
    extra: list[Any] | dict[str, Any] | None = None


class SubmitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /jobs`: submit `input` to `provider`, or track a `task_id` submitted elsewhere."""

    provider: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    task_id: str | None = None
    notify_url: str | None = None  # every event of the job is POSTed here, signed


class JobList(msgspec.Struct, kw_only=True):
    items: list[Job]
    next: str | None


class SpendList(msgspec.Struct, kw_only=True):
    """`GET /costs`: spend by provider and UTC day (and metadata value), oldest day first."""

    items: list[Spend]


class EventList(msgspec.Struct, kw_only=True):
    items: list[Event]


class DeliveryList(msgspec.Struct, kw_only=True):
    items: list[Delivery]


class QuarantineList(msgspec.Struct, kw_only=True):
    items: list[Quarantined]


class RequestList(msgspec.Struct, kw_only=True):
    items: list[RawRequest]


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /deliveries/replay`: which finished deliveries to run again.

    `job_id` and `handler` narrow the choice (both may be given); `all_dead` replays every
    dead delivery and is needed when neither is given, so an empty body replays nothing.
    `include_done` also replays deliveries that succeeded.
    """

    job_id: str | None = None
    handler: str | None = None
    all_dead: bool = False
    include_done: bool = False


def replay_states(include_done: bool) -> frozenset[DeliveryState]:
    """The states a replay takes deliveries from."""
    if include_done:
        return frozenset({DeliveryState.DEAD, DeliveryState.DONE})
    return frozenset({DeliveryState.DEAD})
