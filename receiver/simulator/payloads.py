"""What each provider would say about one task at one status, in the provider's own shape.

The simulated providers render these same bodies for their callbacks and status
answers; here they are built for any task id, so `receiver trigger` and the testing kit
can produce a realistic statement without a simulator running.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from receiver.simulator import aivideoapi, apiframe, artvisum, rixapi
from receiver.simulator.config import SimConfig
from receiver.simulator.core import Phase, SimTask

__all__ = ["PHASES", "Kind", "Payload", "payload_for"]

# The canonical statuses a simulated provider can be put in.
PHASES = {phase.value: phase for phase in Phase}


class Kind(enum.StrEnum):
    """Which of the provider's documents the body is."""

    CALLBACK = "callback"  # what it POSTs to the job's callback URL
    STATUS = "status"  # what its status API answers (after a nudge, or for a poll)
    CREATED = "created"  # what its create call answers (a synchronous provider)


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """A provider body and the document it imitates."""

    provider: str
    kind: Kind
    body: dict[str, Any]


_RENDER = {
    "apiframe": (Kind.CALLBACK, apiframe.render),
    "rixapi": (Kind.CALLBACK, rixapi.render),
    "aivideoapi": (Kind.STATUS, aivideoapi.render),
    "artvisum": (Kind.STATUS, artvisum.render),
}


def payload_for(
    provider: str,
    phase: Phase,
    *,
    task_id: str,
    progress: int | None = None,
    result_url: str | None = None,
    preview_url: str | None = None,
    wrapped: bool = False,
) -> Payload:
    """The body `provider` would send or answer for `task_id` at `phase` (progress in %).

    ValueError for runway_ai in a state other than succeeded: it has no job to describe.
    """
    if provider == "runway_ai":
        if phase is not Phase.SUCCEEDED:
            raise ValueError("runway_ai answers only with a finished result")
        return Payload(provider=provider, kind=Kind.CREATED, body={"video_url": result_url})
    try:
        kind, render = _RENDER[provider]
    except KeyError:
        raise ValueError(f"no provider {provider!r}") from None
    if progress is None:
        progress = {Phase.QUEUED: 0, Phase.RUNNING: 40, Phase.SUCCEEDED: 100}.get(phase, 40)
    task = SimTask(
        provider=provider,
        task_id=task_id,
        config=SimConfig(wrapped=wrapped),
        result_url=result_url,
        preview_url=preview_url,
        status=phase,
        progress=progress,
    )
    body = render(task, phase, progress)
    if provider == "rixapi" and wrapped:
        body = rixapi.wrap(body)
    return Payload(provider=provider, kind=kind, body=body)
