"""Fuzzing the hook routes in-process against a real SQLite store: no 500, no hang, no leak.

Each test shares one app and one store across all its cases, as a running receiver
would. Properties checked per case: the answer is never 5xx and comes in bounded time;
a request that does not authenticate changes nothing (jobs, events, deliveries, raw
requests) and fires no handler; every 4xx leaves exactly one quarantine row, with no
token or secret in it; an acknowledged request leaves none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from asgi import Answer, Snapshot, call, snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from payloads import ODD_TEXT, TASK, bodies, query_strings
from tally import answered, count, examples

from receiver.app import create_app
from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.models import Job, Status, new_id, now
from receiver.providers import PROVIDERS, CallbackStyle
from receiver.store import NewJob
from receiver.verify import digest

JOB_CALLBACK = "POST /hooks/{provider}/{token}"
NUDGE = "GET /hooks/{provider}/{token}?uuid="
PROVIDER_CALLBACK = "POST /hooks/{provider}"
MAX_BODY = 4096
CASES = examples(2000)

TOKENS = {name: f"tok-{name}-" + "k" * 40 for name in PROVIDERS}
SECRETS = {name: f"sec-{name}-" + "s" * 40 for name in PROVIDERS}
# Static secrets for some providers only: the others keep the static route disabled.
STATIC = {name: f"static-{name}-" + "z" * 40 for name in ("apiframe", "rixapi", "aivideoapi")}
TASK_IDS = {name: f"task-{name}-1" for name in PROVIDERS}
CREDENTIALS = [*TOKENS.values(), *SECRETS.values(), *STATIC.values()]

PROVIDER_NAMES = st.one_of(
    st.sampled_from(sorted(PROVIDERS)),
    st.sampled_from(sorted(PROVIDERS)),
    st.sampled_from(sorted(PROVIDERS)),
    st.sampled_from(sorted(PROVIDERS)).map(str.upper),
    ODD_TEXT.filter(lambda text: "/" not in text and text.strip() != ""),
)
SECRET_VALUES = st.one_of(
    st.sampled_from([*SECRETS.values(), *STATIC.values()]).map(lambda s: s.encode()),
    st.sampled_from(["", "wrong", " " + SECRETS["apiframe"], SECRETS["apiframe"] + "\x00"]).map(
        lambda s: s.encode("latin-1")
    ),
    st.binary(max_size=80),
)
OTHER_HEADERS = st.just([]) | st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(
                [b"content-length", b"transfer-encoding", b"content-type", b"x-forwarded-for"]
            ),
            st.sampled_from(
                [
                    b"0",
                    b"5",
                    b"-1",
                    b"99999999999999999999",
                    b"abc",
                    b"",
                    b"chunked",
                    b"gzip",
                    b"application/json",
                    b"application/json; charset=latin-1",
                    b"text/plain",
                    b"\xff\xfe",
                    b"1, 2",
                    b"203.0.113.9, 10.0.0.1",
                    b"::1, ::ffff:1.2.3.4, [::1]:80, 999.1.1.1, ,,",
                    b"unknown, _hidden, 1.2.3.4%eth0",
                ]
            ),
        ),
        st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)),
    ),
    max_size=4,
)


class Rig:
    """One app on one SQLite file, a read-only view of that file, and the handler calls."""

    def __init__(self, app: Any, db: sqlite3.Connection, jobs: dict[str, Job]):
        self.app = app
        self.db = db
        self.jobs = jobs
        self.handled: list[str] = []
        self.errors: list[logging.LogRecord] = []

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def last_quarantined(self) -> tuple[str, str, str, int]:
        row = self.db.execute(
            "SELECT path, query, headers, status_code FROM quarantine ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        return tuple(row)  # type: ignore[return-value]


class _Errors(logging.Handler):
    """Collects ERROR records of the request path: an adapter tripping is a bug even if answered."""

    def __init__(self, into: list[logging.LogRecord]):
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in ("receiver", "receiver.hooks"):
            self.into.append(record)


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[None]:
    """The app's lifespan, run in a task of its own as a server runs it (setup and teardown
    of a fixture may run in different tasks, which the lifespan's cancel scopes forbid)."""
    up, down = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            up.set()
            await down.wait()

    task = asyncio.create_task(lifespan())
    await asyncio.wait([task, asyncio.create_task(up.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield
    finally:
        down.set()
        await task


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    env = {
        "RECEIVER_PUBLIC_URL": "http://127.0.0.1:9",
        "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
        "RECEIVER_ADMIN_TOKEN": "admin-" + "a" * 40,
        "RECEIVER_HANDLERS": "",
        "RECEIVER_MAX_BODY_BYTES": str(MAX_BODY),
        # Failed authentication is not rate limited here, so every case reaches the hooks.
        "RECEIVER_AUTH_FAILURE_BURST": "1000000000",
        # The in-process client (203.0.113.7) is a trusted proxy: X-Forwarded-For is read.
        "RECEIVER_TRUSTED_PROXIES": "203.0.113.0/24, ::1",
        **{f"RECEIVER_{name.upper()}_WEBHOOK_SECRET": value for name, value in STATIC.items()},
    }
    registry = Registry()
    handled: list[str] = []

    @registry.on("*")
    async def record(event: Any, job: Any) -> None:
        handled.append(job.id)

    # The loops stay off so no background poll moves a job between two snapshots; the
    # dispatcher is drained at the end, firing every delivery the cases made.
    app = create_app(load_settings(env, config_file=None), handlers=registry, run_loops=False)
    async with serving(app):
        store = app.state.runtime.store
        jobs: dict[str, Job] = {}
        for name in PROVIDERS:
            at = now()
            job = Job(
                id=new_id("job"),
                provider=name,
                task_id=TASK_IDS[name],
                status=Status.QUEUED,
                created_at=at,
                updated_at=at,
            )
            await store.create_job(
                NewJob(job=job, token_hash=digest(TOKENS[name]), secret_hash=digest(SECRETS[name]))
            )
            jobs[name] = job
        db = sqlite3.connect(f"file:{tmp_path / 'receiver.db'}?mode=ro", uri=True)
        rig = Rig(app, db, jobs)
        rig.handled = handled
        watcher = _Errors(rig.errors)
        logging.getLogger("receiver").addHandler(watcher)
        try:
            yield rig
            # Every delivery made was for an authenticated request; each fires exactly once.
            await app.state.runtime.dispatcher.drain(timeout=30)
            assert snapshot(db).deliveries == len(handled)
        finally:
            logging.getLogger("receiver").removeHandler(watcher)
            db.close()


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)] or [b""]


def _check(rig: Rig, answer: Answer, before: Snapshot, *, authenticated: bool, route: str) -> None:
    after = snapshot(rig.db)
    answered(route, answer.status)
    assert answer.status < 500, f"{route}: {answer.status} {answer.body[:200]!r}"
    assert [] == [r.getMessage() for r in rig.errors], f"{route}: the request path logged an error"
    assert answer.body.startswith(b"{"), f"{route}: answers are JSON objects"
    msgspec.json.decode(answer.body)  # never a traceback or HTML page
    if not authenticated:
        assert answer.status >= 400, f"{route}: unauthenticated request answered {answer.status}"
        changed = msgspec.structs.replace(after, quarantine=before.quarantine)
        assert before == changed, f"{route}: unauthenticated request changed the store"
    if answer.status == 429:  # refused before any work, on purpose without a quarantine write
        assert before == after
    elif answer.status >= 400:
        assert before.quarantine + 1 == after.quarantine, (
            f"{route}: {answer.status} {answer.body!r} not kept"
        )
        path, query, headers, status = rig.last_quarantined()
        assert answer.status == status
        leaked = [c for c in CREDENTIALS if c in path or c in query or c in headers]
        assert [] == leaked, f"{route}: a credential was kept in the quarantine"
    else:
        assert before.quarantine == after.quarantine


def _token(rig: Rig, provider: str, choice: int, junk: str) -> tuple[str, bool]:
    """A token to put in the path, and whether it is the provider's own job's token."""
    own = TOKENS.get(provider)
    if choice == 0 and own is not None:
        return own, True
    if choice == 1:
        other = sorted(TOKENS)[len(junk) % len(TOKENS)]
        return TOKENS[other], other == provider
    if choice == 2 and own is not None:
        return own + junk, junk == ""
    return junk or "x", False


SECRET_HEADER = st.lists(
    st.tuples(st.sampled_from([b"x-webhook-secret", b"X-Webhook-Secret"]), SECRET_VALUES),
    max_size=3,
)


class TestJobCallbackFuzz:
    """POST /hooks/{provider}/{token}: no input makes it fail, leak or act without credentials."""

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(
        provider=PROVIDER_NAMES,
        choice=st.sampled_from([0, 0, 0, 1, 2, 3]),  # mostly the job's own token
        junk=ODD_TEXT.filter(lambda text: "/" not in text),
        secrets=SECRET_HEADER,
        others=OTHER_HEADERS,
        body=bodies(MAX_BODY),
        cuts=st.lists(st.integers(0, 10_000), max_size=3),
        sender=st.sampled_from([None, "apiframe", "rixapi"]),
    )
    async def test_job_callback(
        self,
        rig: Rig,
        provider: str,
        choice: int,
        junk: str,
        secrets: list[tuple[bytes, bytes]],
        others: list[tuple[bytes, bytes]],
        body: bytes,
        cuts: list[int],
        sender: str | None,
    ) -> None:
        with count(JOB_CALLBACK):
            if sender is not None:  # a provider's genuine sender, with its job's credentials
                provider, choice = sender, 0
                secrets = [(b"x-webhook-secret", SECRETS[sender].encode()), *secrets][:1]
            token, own = _token(rig, provider, choice, junk)
            offered = [value for _, value in secrets]
            style = PROVIDERS[provider].callback_style if provider in PROVIDERS else None
            proven = own and (
                style is not CallbackStyle.SECRET_POST
                or any(
                    value in (SECRETS[provider].encode(), STATIC[provider].encode())
                    for value in offered
                )
            )
            body = body.replace(TASK.encode(), TASK_IDS.get(provider, "t").encode())
            before = snapshot(rig.db)
            answer = await call(
                rig.app,
                "POST",
                f"/hooks/{provider}/{token}",
                headers=[*secrets, *others],
                chunks=_split(body, cuts),
            )
            _check(rig, answer, before, authenticated=proven, route=JOB_CALLBACK)
            if answer.status == 200:
                assert style in (CallbackStyle.SECRET_POST, CallbackStyle.POST)


class TestNudgeFuzz:
    """GET /hooks/{provider}/{token}?uuid=: broken query strings never fail or act unproven."""

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(
        provider=PROVIDER_NAMES,
        choice=st.sampled_from([0, 0, 0, 1, 2, 3]),  # mostly the job's own token
        junk=ODD_TEXT.filter(lambda text: "/" not in text),
        query=query_strings(),
        own_uuid=st.sampled_from([b"", b"uuid=TASK", b"&uuid=TASK", b"uuid=TASK&uuid=other"]),
        others=OTHER_HEADERS,
        body=st.one_of(st.just(b""), bodies(MAX_BODY)),
    )
    async def test_nudge(
        self,
        rig: Rig,
        provider: str,
        choice: int,
        junk: str,
        query: bytes,
        own_uuid: bytes,
        others: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        with count(NUDGE):
            token, own = _token(rig, provider, choice, junk)
            task = TASK_IDS.get(provider, "t").encode()
            before = snapshot(rig.db)
            answer = await call(
                rig.app,
                "GET",
                f"/hooks/{provider}/{token}",
                query=query + own_uuid.replace(b"TASK", task),
                headers=others,
                chunks=[body],
            )
            _check(rig, answer, before, authenticated=own, route=NUDGE)
            if answer.status == 202:
                assert PROVIDERS[provider].can_pull


class TestProviderCallbackFuzz:
    """POST /hooks/{provider}: only the provider's static secret lets a callback in."""

    @settings(settings.get_profile("fuzz"), max_examples=CASES)
    @given(
        provider=PROVIDER_NAMES,
        secrets=SECRET_HEADER,
        others=OTHER_HEADERS,
        body=bodies(MAX_BODY),
        cuts=st.lists(st.integers(0, 10_000), max_size=3),
        new_task=st.integers(0, 50),
    )
    async def test_provider_callback(
        self,
        rig: Rig,
        provider: str,
        new_task: int,
        secrets: list[tuple[bytes, bytes]],
        others: list[tuple[bytes, bytes]],
        body: bytes,
        cuts: list[int],
    ) -> None:
        with count(PROVIDER_CALLBACK):
            offered = [value for _, value in secrets]
            proven = provider in STATIC and STATIC[provider].encode() in offered
            body = body.replace(TASK.encode(), f"task-{new_task}".encode())
            before = snapshot(rig.db)
            answer = await call(
                rig.app,
                "POST",
                f"/hooks/{provider}",
                headers=[*secrets, *others],
                chunks=_split(body, cuts),
            )
            _check(rig, answer, before, authenticated=proven, route=PROVIDER_CALLBACK)
