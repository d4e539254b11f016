"""The backend-independent half of `Store.record`: what a write does, decided without I/O.

A backend looks the job up and asks whether the event's dedupe key (`dedupe_key_of`) is
stored already; `apply_write` then gives the event, the job after it and its deliveries,
and the backend only runs the statements that store them. SQLite and PostgreSQL share
it, so the state machine, the event and the deliveries cannot drift apart between them.
"""

from __future__ import annotations

from collections.abc import Callable

from receiver.models import Delivery, DeliveryState, Disposition, Job, Update, new_id
from receiver.state import RENEWAL, Transition, advance, dedupe_key, event_of
from receiver.store.base import Claim, Recorded, Router, Write

__all__ = ["apply_write", "claimer", "dedupe_key_of"]


def dedupe_key_of(job: Job, update: Update) -> str:
    """The dedupe key `update` is stored under for `job`, asked about before `apply_write`."""
    return dedupe_key(job.provider, job.task_id or update.task_id, update)


def apply_write(
    job: Job,
    rank: float,
    new: bool,
    write: Write,
    *,
    duplicate: bool,
    route: Router,
    claim: Claim | None = None,
    claimable: Callable[[str], bool] | None = None,
) -> tuple[Recorded, Transition]:
    """`write` applied to `job` as found (its preview's `rank`, `new` when not yet stored).

    `duplicate` says whether the job has an event with the write's dedupe key already.
    Returns what `Store.record` answers and the transition the backend stores the job by.
    Up to `claim.most` deliveries are claimed, leased for `claim.lease` seconds, in route
    order: those whose handler has nothing of the job unfinished, which
    `claimable(handler)` says (a new job has nothing and is not asked about; without
    `claimable`, only a new job's are). The backend stamps `claim.worker` on them.
    """
    update, at, raw = write.update, write.at, write.raw
    transition = advance(
        job,
        update,
        duplicate=duplicate,
        at=at,
        preview_from=rank,
        renewal=write.source == RENEWAL,
    )
    event = event_of(
        job,
        update,
        transition,
        source=write.source,
        at=at,
        request_id=raw.id if raw is not None else None,
    )
    after = transition.job
    deliveries: list[Delivery] = []
    room = claim.most if claim is not None else 0
    lease = claim.lease if claim is not None else 0.0
    if transition.disposition is Disposition.APPLIED:
        for handler in route(event, after):
            # Claimed at once when the caller has room for it and nothing of this job
            # waits before it for the handler: no claim round trip.
            claimed = room > 0 and (new or (claimable is not None and claimable(handler)))
            deliveries.append(
                Delivery(
                    id=new_id("dlv"),
                    event_id=event.id,
                    job_id=job.id,
                    handler=handler,
                    state=DeliveryState.RUNNING if claimed else DeliveryState.PENDING,
                    attempts=1 if claimed else 0,
                    next_attempt_at=at,
                    lease_until=at + lease if claimed else None,
                    created_at=at,
                    updated_at=at,
                )
            )
            room -= claimed
    return Recorded(event=event, job=after, deliveries=deliveries), transition


def claimer(delivery: Delivery, claim: Claim | None) -> str | None:
    """The worker id a new delivery's row is stamped with: the claim's, if it was claimed."""
    if claim is None or delivery.state is not DeliveryState.RUNNING:
        return None
    return claim.worker
