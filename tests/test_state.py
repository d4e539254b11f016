"""The monotonic job state machine (`advance`) and event dedupe keys."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from receiver.models import TERMINAL, Disposition, Job, Status, Update
from receiver.state import advance, dedupe_key

T0 = 1_000.0


def make_job(
    status: Status = Status.QUEUED,
    *,
    progress: float | None = None,
    task_id: str | None = "task-1",
    **fields: Any,
) -> Job:
    return Job(
        id="job_1",
        provider="apiframe",
        task_id=task_id,
        status=status,
        progress=progress,
        created_at=T0,
        updated_at=T0,
        **fields,
    )


def make_update(
    status: Status, *, progress: float | None = None, raw_status: str | None = None, **fields: Any
) -> Update:
    return Update(
        status=status,
        raw_status=raw_status if raw_status is not None else status.value,
        progress=progress,
        **fields,
    )


def outcome(job: Job) -> tuple[Any, ...]:
    """The part of a job that must not depend on the order its events arrived in."""
    return (job.status, job.progress, job.result_url, job.preview_url, job.error)


def replay(initial: Job, updates: list[Update]) -> Job:
    """Apply `updates` the way the store does: duplicates found by dedupe key over seen events."""
    job, seen, rank = initial, set(), -1.0
    for i, update in enumerate(updates):
        key = dedupe_key(job.provider, job.task_id or update.task_id, update)
        transition = advance(job, update, duplicate=key in seen, at=T0 + 1 + i, preview_from=rank)
        job, rank = transition.job, transition.preview_rank
        seen.add(key)
    return job


class TestDedupeKey:
    """An event's dedupe key names its provider, task, status and progress, or the delivery id."""

    def test_same_statement_same_key(self) -> None:
        """Two identical statements about a task share a key."""
        update = make_update(Status.RUNNING, progress=0.5)
        assert dedupe_key("apiframe", "t1", update) == dedupe_key(
            "apiframe", "t1", make_update(Status.RUNNING, progress=0.5)
        )

    def test_each_part_changes_the_key(self) -> None:
        """Changing the provider, task, status or progress gives a different key."""
        base = dedupe_key("apiframe", "t1", make_update(Status.RUNNING, progress=0.5))
        variants = {
            dedupe_key("rixapi", "t1", make_update(Status.RUNNING, progress=0.5)),
            dedupe_key("apiframe", "t2", make_update(Status.RUNNING, progress=0.5)),
            dedupe_key("apiframe", "t1", make_update(Status.QUEUED, progress=0.5)),
            dedupe_key("apiframe", "t1", make_update(Status.RUNNING, progress=0.6)),
            dedupe_key("apiframe", "t1", make_update(Status.RUNNING, progress=None)),
            dedupe_key("apiframe", None, make_update(Status.RUNNING, progress=0.5)),
        }
        assert 6 == len(variants)
        assert base not in variants

    def test_no_progress_differs_from_zero_progress(self) -> None:
        """A status without progress is not the same statement as one at 0%."""
        assert dedupe_key("p", "t", make_update(Status.RUNNING)) != dedupe_key(
            "p", "t", make_update(Status.RUNNING, progress=0.0)
        )

    def test_delivery_id_wins_over_content(self) -> None:
        """With a provider delivery id, the id alone decides what is a repeat."""
        first = make_update(Status.RUNNING, progress=0.1, delivery_id="d-1")
        resent = make_update(Status.RUNNING, progress=0.9, delivery_id="d-1")
        other = make_update(Status.RUNNING, progress=0.1, delivery_id="d-2")
        assert dedupe_key("p", "t", first) == dedupe_key("p", "t", resent)
        assert dedupe_key("p", "t", first) != dedupe_key("p", "t", other)


class TestForwardMoves:
    """An event that moves a job forward is applied and copied onto the job."""

    def test_queued_to_running(self) -> None:
        """A running event moves a queued job to running with its progress."""
        job = make_job()
        result = advance(
            job, make_update(Status.RUNNING, progress=0.25), duplicate=False, at=T0 + 5
        )
        assert Disposition.APPLIED == result.disposition
        assert result.changed
        assert Status.RUNNING == result.job.status
        assert 0.25 == result.job.progress
        assert T0 + 5 == result.job.updated_at

    def test_more_progress_in_the_same_status(self) -> None:
        """Higher progress while running is news."""
        job = make_job(Status.RUNNING, progress=0.25)
        result = advance(job, make_update(Status.RUNNING, progress=0.5), duplicate=False, at=T0)
        assert Disposition.APPLIED == result.disposition
        assert 0.5 == result.job.progress

    def test_input_job_is_not_modified(self) -> None:
        """`advance` returns a new job and leaves the one it was given alone."""
        job = make_job()
        advance(job, make_update(Status.RUNNING, progress=0.5), duplicate=False, at=T0 + 1)
        assert (Status.QUEUED, None, T0) == (job.status, job.progress, job.updated_at)

    def test_succeeded_sets_full_progress_and_urls(self) -> None:
        """Success means progress 1.0 whatever the provider said, plus its result and preview."""
        job = make_job(Status.RUNNING, progress=0.4)
        update = make_update(
            Status.SUCCEEDED,
            progress=None,
            raw_status="completed",
            result_url="https://cdn.example/v.mp4",
            preview_url="https://cdn.example/v.jpg",
        )
        result = advance(job, update, duplicate=False, at=T0)
        assert Disposition.APPLIED == result.disposition
        assert 1.0 == result.job.progress
        assert "https://cdn.example/v.mp4" == result.job.result_url
        assert "https://cdn.example/v.jpg" == result.job.preview_url
        assert "completed" == result.job.raw_status
        assert None is result.job.error

    def test_earlier_preview_is_kept_when_the_update_has_none(self) -> None:
        """A forward event without URLs does not erase the ones the job already has."""
        job = make_job(Status.RUNNING, progress=0.4, preview_url="https://cdn.example/p.jpg")
        result = advance(job, make_update(Status.RUNNING, progress=0.6), duplicate=False, at=T0)
        assert "https://cdn.example/p.jpg" == result.job.preview_url

    def test_failed_keeps_the_providers_error(self) -> None:
        """A failure carries the provider's own message and code."""
        job = make_job(Status.RUNNING, progress=0.7)
        update = make_update(
            Status.FAILED, raw_status="error", error="content moderation", error_code="E42"
        )
        result = advance(job, update, duplicate=False, at=T0)
        assert Status.FAILED == result.job.status
        assert "content moderation" == result.job.error
        assert "E42" == result.job.error_code
        assert 0.7 == result.job.progress

    def test_failed_clears_an_earlier_result_url(self) -> None:
        """A failure has no result: a URL an earlier event put on the job does not survive it."""
        job = make_job(Status.RUNNING, progress=0.4, result_url="https://evil.example/v.mp4")
        update = make_update(Status.FAILED, raw_status="2", error="generation failed")
        assert None is advance(job, update, duplicate=False, at=T0).job.result_url

    def test_failed_without_message_names_the_raw_status(self) -> None:
        """A failure without a message gets a default one naming the provider's status."""
        result = advance(
            make_job(), make_update(Status.FAILED, raw_status="BLOCKED"), duplicate=False, at=T0
        )
        assert result.job.error is not None
        assert "BLOCKED" in result.job.error

    def test_cancelled_without_message_names_the_raw_status(self) -> None:
        """Cancellation is an error too, with the same default message."""
        result = advance(
            make_job(), make_update(Status.CANCELLED, raw_status="aborted"), duplicate=False, at=T0
        )
        assert Status.CANCELLED == result.job.status
        assert result.job.error is not None
        assert "aborted" in result.job.error

    def test_task_id_filled_when_the_job_had_none(self) -> None:
        """The first event naming the task gives the job its task id."""
        job = make_job(task_id=None)
        update = make_update(Status.RUNNING, progress=0.1, task_id="task-9")
        assert "task-9" == advance(job, update, duplicate=False, at=T0).job.task_id

    def test_task_id_never_replaced(self) -> None:
        """A job's known task id is not overwritten by what an event says."""
        update = make_update(Status.RUNNING, progress=0.1, task_id="other")
        assert "task-1" == advance(make_job(), update, duplicate=False, at=T0).job.task_id


class TestDuplicates:
    """A duplicate is stored as such and never changes the job."""

    def test_duplicate_changes_nothing_even_if_it_would_move_forward(self) -> None:
        """The duplicate flag wins over what the event says."""
        job = make_job()
        result = advance(job, make_update(Status.SUCCEEDED), duplicate=True, at=T0 + 9)
        assert (Disposition.DUPLICATE, False) == (result.disposition, result.changed)
        assert job == result.job


class TestLateEvents:
    """An event that would move a job backwards is late: stored, fires nothing, status kept."""

    def test_anything_after_a_terminal_state_is_late(self) -> None:
        """No status leaves a terminal state."""
        for terminal in TERMINAL:
            job = make_job(terminal, progress=1.0 if terminal is Status.SUCCEEDED else 0.5)
            for status in Status:
                result = advance(job, make_update(status, progress=0.9), duplicate=False, at=T0)
                assert Disposition.LATE == result.disposition, (terminal, status)
                assert terminal == result.job.status

    def test_late_progress_after_success_stays_at_one(self) -> None:
        """A running event after success neither lowers nor touches the finished job."""
        job = make_job(Status.SUCCEEDED, progress=1.0, result_url="https://cdn.example/v.mp4")
        result = advance(job, make_update(Status.RUNNING, progress=0.3), duplicate=False, at=T0)
        assert (Disposition.LATE, False) == (result.disposition, result.changed)
        assert job == result.job

    def test_late_progress_after_failure_raises_progress(self) -> None:
        """A running event that arrives after the failure still raises its progress."""
        job = make_job(Status.FAILED, progress=0.2, error="boom")
        result = advance(job, make_update(Status.RUNNING, progress=0.6), duplicate=False, at=T0)
        assert (Disposition.LATE, True) == (result.disposition, result.changed)
        assert (Status.FAILED, 0.6, "boom") == (
            result.job.status,
            result.job.progress,
            result.job.error,
        )

    def test_lower_progress_in_the_same_status_is_late(self) -> None:
        """Progress never goes back."""
        job = make_job(Status.RUNNING, progress=0.5)
        result = advance(job, make_update(Status.RUNNING, progress=0.3), duplicate=False, at=T0)
        assert (Disposition.LATE, False) == (result.disposition, result.changed)
        assert 0.5 == result.job.progress

    def test_equal_progress_in_the_same_status_is_late(self) -> None:
        """The same progress again is no news."""
        job = make_job(Status.RUNNING, progress=0.5)
        result = advance(job, make_update(Status.RUNNING, progress=0.5), duplicate=False, at=T0)
        assert Disposition.LATE == result.disposition

    def test_same_status_without_progress_is_late(self) -> None:
        """A running event without progress says nothing new to a running job."""
        job = make_job(Status.RUNNING, progress=0.5)
        result = advance(job, make_update(Status.RUNNING), duplicate=False, at=T0)
        assert (Disposition.LATE, False) == (result.disposition, result.changed)
        assert 0.5 == result.job.progress

    def test_queued_after_running_is_late(self) -> None:
        """A job never goes back to queued."""
        job = make_job(Status.RUNNING, progress=0.1)
        result = advance(job, make_update(Status.QUEUED), duplicate=False, at=T0)
        assert Disposition.LATE == result.disposition
        assert Status.RUNNING == result.job.status

    def test_late_event_fills_a_missing_task_id(self) -> None:
        """Even a late event may tell a job its task id."""
        job = make_job(Status.FAILED, task_id=None, progress=0.5)
        update = make_update(Status.RUNNING, progress=0.1, task_id="task-7")
        result = advance(job, update, duplicate=False, at=T0)
        assert (Disposition.LATE, True) == (result.disposition, result.changed)
        assert "task-7" == result.job.task_id

    def test_late_preview_is_not_lost(self) -> None:
        """A preview URL carried only by an event that arrived late ends up on the job anyway."""
        early = make_update(
            Status.RUNNING, progress=0.5, task_id="t", preview_url="https://cdn.example/f.jpg"
        )
        later = make_update(Status.RUNNING, progress=0.8, task_id="t")
        start = make_job(task_id=None)
        in_order = replay(start, [early, later])
        reversed_ = replay(start, [later, early])
        assert in_order.preview_url == reversed_.preview_url


class TestRenewal:
    """Only a renewal (a pull made because the result expired) gives a succeeded job new URLs."""

    OLD = "https://cdn.example/v.mp4?sig=old"
    NEW = "https://cdn.example/v.mp4?sig=new"

    def _succeeded(self) -> Job:
        return make_job(
            Status.SUCCEEDED,
            progress=1.0,
            result_url=self.OLD,
            preview_url="https://cdn.example/p.jpg?sig=old",
        )

    def test_fresh_urls_replace_the_expired_ones_and_fire_nothing(self) -> None:
        """The job takes both fresh URLs; the event is marked renewed, so no handler runs."""
        fresh = make_update(
            Status.SUCCEEDED,
            progress=1.0,
            result_url=self.NEW,
            preview_url="https://cdn.example/p.jpg?sig=new",
        )
        result = advance(self._succeeded(), fresh, duplicate=True, at=T0 + 5, renewal=True)
        assert (Disposition.RENEWED, True) == (result.disposition, result.changed)
        assert (self.NEW, "https://cdn.example/p.jpg?sig=new", Status.SUCCEEDED, T0 + 5) == (
            result.job.result_url,
            result.job.preview_url,
            result.job.status,
            result.job.updated_at,
        )

    def test_a_renewal_without_a_preview_keeps_the_preview(self) -> None:
        """A statement with only a fresh result URL leaves the preview as it was."""
        fresh = make_update(Status.SUCCEEDED, result_url=self.NEW)
        result = advance(self._succeeded(), fresh, duplicate=False, at=T0, renewal=True)
        assert (self.NEW, "https://cdn.example/p.jpg?sig=old") == (
            result.job.result_url,
            result.job.preview_url,
        )

    def test_any_other_statement_with_another_url_changes_nothing(self) -> None:
        """A repeated or late callback (perhaps with the old link) never moves the URLs."""
        job = self._succeeded()
        fresh = make_update(Status.SUCCEEDED, progress=1.0, result_url=self.NEW)
        for duplicate in (True, False):
            result = advance(job, fresh, duplicate=duplicate, at=T0)
            assert (False, job) == (result.changed, result.job)

    def test_the_same_urls_are_no_renewal(self) -> None:
        """A renewal pull that brings the links the job has is a plain duplicate."""
        same = make_update(Status.SUCCEEDED, progress=1.0, result_url=self.OLD)
        result = advance(self._succeeded(), same, duplicate=True, at=T0, renewal=True)
        assert (Disposition.DUPLICATE, False) == (result.disposition, result.changed)

    def test_only_a_succeeded_job_is_renewed(self) -> None:
        """A failed job stays without a result whatever a renewal says."""
        job = make_job(Status.FAILED, progress=0.5, error="boom")
        fresh = make_update(Status.SUCCEEDED, result_url=self.NEW)
        result = advance(job, fresh, duplicate=False, at=T0, renewal=True)
        assert (Disposition.LATE, None) == (result.disposition, result.job.result_url)


_TASK = "task-1"
_PREVIEW = st.none() | st.sampled_from(["https://cdn.example/a.jpg", "https://cdn.example/b.jpg"])


@st.composite
def histories(draw: st.DrawFn) -> list[Update]:
    """One job's events in the order a provider sends them."""
    events = [
        Update(
            status=Status.QUEUED,
            raw_status="queued",
            task_id=_TASK,
            progress=draw(st.none() | st.just(0.0)),
        )
    ]
    # Providers report whole percents; strictly increasing.
    percents = sorted(draw(st.sets(st.integers(0, 99), max_size=6)))
    for percent in percents:
        events.append(
            Update(
                status=Status.RUNNING,
                raw_status="processing",
                task_id=_TASK,
                progress=percent / 100,
                preview_url=draw(_PREVIEW),
            )
        )
    terminal = draw(st.sampled_from([None, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]))
    if terminal is Status.SUCCEEDED:
        events.append(
            Update(
                status=terminal,
                raw_status="completed",
                task_id=_TASK,
                progress=draw(st.none() | st.just(1.0)),
                result_url="https://cdn.example/video.mp4",
                preview_url=draw(_PREVIEW),
            )
        )
    elif terminal is not None:
        events.append(
            Update(
                status=terminal,
                raw_status="error" if terminal is Status.FAILED else "cancelled",
                task_id=_TASK,
                progress=draw(st.none() | st.integers(0, 99).map(lambda p: p / 100)),
                error=draw(st.none() | st.just("content moderation")),
                error_code=draw(st.none() | st.just("E42")),
            )
        )
    return events


@st.composite
def shuffled_with_repeats(draw: st.DrawFn) -> tuple[list[Update], list[Update]]:
    """A history, and the same events in any order with any of them repeated."""
    history = draw(histories())
    repeats = draw(st.lists(st.sampled_from(history), max_size=4))
    return history, draw(st.permutations(history + repeats))


_UPDATES = st.builds(
    Update,
    status=st.sampled_from(Status),
    raw_status=st.sampled_from(["queued", "running", "done", "error"]),
    task_id=st.none() | st.just(_TASK),
    progress=st.none() | st.floats(0.0, 1.0),
    result_url=st.none() | st.just("https://cdn.example/video.mp4"),
    error=st.none() | st.just("boom"),
)


class TestProperties:
    """Whatever order and repeats events arrive in, the job ends the same and never goes back."""

    @given(shuffled_with_repeats(), st.sampled_from([None, _TASK]))
    def test_arrival_order_does_not_change_the_outcome(
        self, case: tuple[list[Update], list[Update]], initial_task: str | None
    ) -> None:
        """Any permutation with duplicates ends where the in-order history ends."""
        history, arrived = case
        start = make_job(task_id=initial_task)
        assert outcome(replay(start, history)) == outcome(replay(start, arrived))

    @given(
        st.sampled_from(Status),
        st.none() | st.floats(0.0, 1.0),
        st.lists(_UPDATES, max_size=12),
    )
    def test_terminal_is_final_and_progress_never_decreases(
        self, status: Status, progress: float | None, updates: list[Update]
    ) -> None:
        """After every step a terminal status is unchanged and progress is not lower."""
        job = make_job(status, progress=progress, task_id=None)
        seen: set[str] = set()
        for i, update in enumerate(updates):
            key = dedupe_key(job.provider, job.task_id or update.task_id, update)
            after = advance(job, update, duplicate=key in seen, at=T0 + i).job
            seen.add(key)
            if job.status.terminal:
                assert job.status == after.status
            if job.progress is not None:
                assert after.progress is not None
                assert after.progress >= job.progress
            if job.task_id is not None:
                assert job.task_id == after.task_id
            job = after

    def test_replaying_a_history_twice_changes_nothing_the_second_time(self) -> None:
        """Every event of an already-applied history is a duplicate on replay."""
        history = [
            make_update(Status.QUEUED, task_id=_TASK),
            make_update(Status.RUNNING, progress=0.5, task_id=_TASK),
            make_update(Status.SUCCEEDED, task_id=_TASK, result_url="https://cdn.example/v.mp4"),
        ]
        once = replay(make_job(), history)
        twice = replay(make_job(), history + history)
        assert msgspec.structs.asdict(once) | {"updated_at": 0} == msgspec.structs.asdict(twice) | {
            "updated_at": 0
        }
