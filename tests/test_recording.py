"""The backend-independent half of recording (`apply_write`), run on plain values, no store."""

from __future__ import annotations

from collections.abc import Sequence

from test_state import T0, make_job, make_update

from receiver.models import DeliveryState, Disposition, Event, Job, Status
from receiver.store import Claim, Write
from receiver.store.recording import apply_write


def route(event: Event, job: Job) -> Sequence[str]:
    return ["a", "b", "c"]


class TestApplyWrite:
    """A write applied to a job as found gives what the stores write, with no I/O."""

    def test_applied_event_job_after_and_pending_deliveries(self) -> None:
        """An applied event, the job after it, and one pending delivery per handler."""
        write = Write(update=make_update(Status.RUNNING, progress=0.5), source="poll", at=T0 + 1)
        recorded, transition = apply_write(
            make_job(), -1.0, False, write, duplicate=False, route=route
        )
        assert (Disposition.APPLIED, "poll", T0 + 1) == (
            recorded.event.disposition,
            recorded.event.source,
            recorded.event.received_at,
        )
        assert (Status.RUNNING, 0.5, True) == (
            recorded.job.status,
            recorded.job.progress,
            transition.changed,
        )
        event_id = recorded.event.id
        assert [
            ("a", DeliveryState.PENDING, event_id),
            ("b", DeliveryState.PENDING, event_id),
            ("c", DeliveryState.PENDING, event_id),
        ] == [(d.handler, d.state, d.event_id) for d in recorded.deliveries]

    def test_a_duplicate_fires_nothing(self) -> None:
        """A duplicate leaves the job as it was and makes no delivery."""
        job = make_job()
        write = Write(update=make_update(Status.RUNNING, progress=0.5), source="callback")
        recorded, transition = apply_write(job, -1.0, False, write, duplicate=True, route=route)
        assert (Disposition.DUPLICATE, job, [], False) == (
            recorded.event.disposition,
            recorded.job,
            recorded.deliveries,
            transition.changed,
        )

    def test_claims_only_claimable_handlers_while_room_lasts(self) -> None:
        """Of `claim` slots, handlers with something unfinished get none; once the slots are
        used, the rest are pending and no more handlers are asked about."""
        asked: list[str] = []

        def claimable(handler: str) -> bool:
            asked.append(handler)
            return handler != "a"

        write = Write(update=make_update(Status.RUNNING, progress=0.5), source="callback", at=T0)
        recorded, _ = apply_write(
            make_job(),
            -1.0,
            False,
            write,
            duplicate=False,
            route=route,
            claim=Claim(most=1, lease=30.0),
            claimable=claimable,
        )
        assert ["a", "b"] == asked
        assert [
            ("a", DeliveryState.PENDING, 0, None),
            ("b", DeliveryState.RUNNING, 1, T0 + 30.0),
            ("c", DeliveryState.PENDING, 0, None),
        ] == [(d.handler, d.state, d.attempts, d.lease_until) for d in recorded.deliveries]

    def test_a_new_job_claims_without_asking(self) -> None:
        """A job not yet stored has nothing unfinished: its handlers are claimed unasked."""
        asked: list[str] = []

        def claimable(handler: str) -> bool:
            asked.append(handler)
            return False

        write = Write(update=make_update(Status.SUCCEEDED), source="callback")
        recorded, _ = apply_write(
            make_job(),
            -1.0,
            True,
            write,
            duplicate=False,
            route=route,
            claim=Claim(most=2, lease=30.0),
            claimable=claimable,
        )
        assert [] == asked
        assert [DeliveryState.RUNNING, DeliveryState.RUNNING, DeliveryState.PENDING] == [
            d.state for d in recorded.deliveries
        ]
