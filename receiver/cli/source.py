"""Where the read-and-replay subcommands get their data: a running receiver's admin API
(`--url`/`RECEIVER_URL`), or the database directly when no receiver is named.

Both sources answer with the same model Structs, so a subcommand is written once and
works the same way in either mode.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from receiver.cli.common import common_options, require_database, setting, settings_from
from receiver.config import Settings
from receiver.costs import Spend
from receiver.errors import ConfigError, IdempotencyKeyReused, ReceiverError, StoreUnavailable
from receiver.models import (
    Delivery,
    DeliveryState,
    Event,
    Job,
    Quarantined,
    RawRequest,
    now,
)
from receiver.store.base import JobPage, metadata_filter
from receiver.wire import (
    DeliveryList,
    EventList,
    QuarantineList,
    RequestList,
    SpendList,
    replay_states,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ApiSource",
    "NotFound",
    "OverBudget",
    "Source",
    "StoreSource",
    "Unreachable",
    "admin_token_for",
    "client_options",
    "open_source",
]

T = TypeVar("T")


class NotFound(ReceiverError):
    """The job or delivery asked for does not exist."""


class OverBudget(ReceiverError):
    """The receiver at RECEIVER_URL refused a submission that would pass a budget (402)."""


class Unreachable(StoreUnavailable):
    """The receiver named by RECEIVER_URL does not answer (exit code 3, like a store down)."""


def client_options(parser: argparse.ArgumentParser) -> None:
    """The options of every subcommand that reads through a `Source`, and `--json`."""
    common_options(parser)
    setting(
        parser,
        "--url",
        "RECEIVER_URL",
        "a running receiver's base URL: use its admin API instead of the database",
    )
    setting(
        parser,
        "--admin-token",
        "RECEIVER_ADMIN_TOKEN",
        "admin token for --url (prefer the variable: options show in `ps`)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


class Source(abc.ABC):
    """What the CLI can ask, whichever way it reaches the data."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        status: str | None,
        provider: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> JobPage:
        """Newest first; `metadata` keeps jobs whose metadata has each key's value."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """The job, or NotFound."""

    @abc.abstractmethod
    async def events(self, job_id: str) -> list[Event]: ...

    @abc.abstractmethod
    async def requests(self, job_id: str) -> list[RawRequest]: ...

    @abc.abstractmethod
    async def deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]: ...

    @abc.abstractmethod
    async def quarantine(self, *, limit: int) -> list[Quarantined]: ...

    @abc.abstractmethod
    async def replay(
        self,
        *,
        delivery_id: str | None = None,
        job_id: str | None = None,
        handler: str | None = None,
        include_done: bool = False,
    ) -> list[Delivery]:
        """Replay by id (dead or done), else by job and/or handler, else every dead one."""

    @abc.abstractmethod
    async def spend(self, *, since: float, by: str | None) -> list[Spend]:
        """Spend since `since`, by provider and UTC day (and metadata key `by`)."""

    @abc.abstractmethod
    async def submit(
        self,
        provider: str,
        fields: dict[str, Any],
        *,
        metadata: dict[str, Any],
        task_id: str | None,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job: ...


class StoreSource(Source):
    """The database itself; a running `serve` picks up replays within its idle wait (1 s).

    Only `submit` needs the whole runtime (providers, handlers); reading needs the store.
    """

    def __init__(self, store: Any, runtime: Any = None) -> None:
        self.runtime = runtime
        self.store = store

    async def list_jobs(
        self,
        *,
        status: str | None,
        provider: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> JobPage:
        try:
            wanted = metadata_filter(metadata or {})
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        page: JobPage = await self.store.list_jobs(
            status=status, provider=provider, limit=limit, metadata=wanted or None
        )
        return page

    async def get_job(self, job_id: str) -> Job:
        job: Job | None = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def events(self, job_id: str) -> list[Event]:
        await self.get_job(job_id)
        events: list[Event] = await self.store.list_events(job_id)
        return events

    async def requests(self, job_id: str) -> list[RawRequest]:
        found: list[RawRequest] = await self.store.list_requests(job_id)
        return found

    async def deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]:
        found: list[Delivery] = await self.store.list_deliveries(
            job_id=job_id, state=state, limit=limit
        )
        return found

    async def quarantine(self, *, limit: int) -> list[Quarantined]:
        found: list[Quarantined] = await self.store.list_quarantine(limit=limit)
        return found

    async def replay(
        self,
        *,
        delivery_id: str | None = None,
        job_id: str | None = None,
        handler: str | None = None,
        include_done: bool = False,
    ) -> list[Delivery]:
        states = replay_states(include_done or delivery_id is not None)
        found: list[Delivery] = await self.store.replay_deliveries(
            delivery_id=delivery_id, job_id=job_id, handler=handler, states=states, at=now()
        )
        return found

    async def spend(self, *, since: float, by: str | None) -> list[Spend]:
        found: list[Spend] = await self.store.spend(since=since, by=by)
        return found

    async def submit(
        self,
        provider: str,
        fields: dict[str, Any],
        *,
        metadata: dict[str, Any],
        task_id: str | None,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        assert self.runtime is not None, "submit needs open_source(..., with_handlers=True)"
        submitter = self.runtime.submitter
        if task_id:
            tracked = await submitter.track(
                provider,
                task_id,
                metadata=metadata,
                notify_url=notify_url,
                idempotency_key=idempotency_key,
            )
            job: Job = tracked.job
            return job
        submitted = await submitter.submit(
            provider,
            fields,
            metadata=metadata,
            local_files=True,
            notify_url=notify_url,
            idempotency_key=idempotency_key,
        )
        done: Job = submitted.job
        return done


class ApiSource(Source):
    """A running receiver's admin API."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _call(
        self,
        method: str,
        path: str,
        kind: type[T],
        *,
        params: Any = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        import httpx

        try:
            answer = await self.client.request(
                method, path, params=params, json=json, headers=headers
            )
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach {self.client.base_url}: {exc}") from None
        if answer.status_code == 401:
            raise ConfigError("the receiver refused the admin token (RECEIVER_ADMIN_TOKEN)")
        if answer.status_code == 404:
            raise NotFound(_error_of(answer) or f"{path} not found")
        if answer.status_code == 503:
            raise Unreachable(f"the receiver's store is unavailable ({self.client.base_url})")
        if answer.status_code == 400:
            raise ConfigError(_error_of(answer) or "the receiver refused the request")
        if answer.status_code == 409:
            raise IdempotencyKeyReused(_error_of(answer) or "the receiver answered 409")
        if answer.status_code == 402:
            raise OverBudget(_error_of(answer) or "the job would pass a spend budget")
        if answer.status_code >= 400:
            raise ReceiverError(f"the receiver answered {answer.status_code} to {method} {path}")
        return msgspec.json.decode(answer.content, type=kind)

    async def list_jobs(
        self,
        *,
        status: str | None,
        provider: str | None,
        limit: int,
        metadata: dict[str, str] | None = None,
    ) -> JobPage:
        params: dict[str, Any] = {"limit": limit, "status": status, "provider": provider}
        params.update({f"metadata.{key}": text for key, text in (metadata or {}).items()})
        return await self._call("GET", "/jobs", JobPage, params=_present(params))

    async def get_job(self, job_id: str) -> Job:
        return await self._call("GET", f"/jobs/{_segment(job_id)}", Job)

    async def spend(self, *, since: float, by: str | None) -> list[Spend]:
        params = _present({"since": since, "by": by})
        found = await self._call("GET", "/costs", SpendList, params=params)
        return found.items

    async def events(self, job_id: str) -> list[Event]:
        found = await self._call("GET", f"/jobs/{_segment(job_id)}/events", EventList)
        return found.items

    async def requests(self, job_id: str) -> list[RawRequest]:
        found = await self._call("GET", f"/jobs/{_segment(job_id)}/requests", RequestList)
        return found.items

    async def deliveries(
        self, *, job_id: str | None = None, state: DeliveryState | None = None, limit: int = 1000
    ) -> list[Delivery]:
        params = _present({"job_id": job_id, "state": state.value if state else None})
        found = await self._call(
            "GET", "/deliveries", DeliveryList, params={**params, "limit": limit}
        )
        return found.items

    async def quarantine(self, *, limit: int) -> list[Quarantined]:
        found = await self._call("GET", "/quarantine", QuarantineList, params={"limit": limit})
        return found.items

    async def replay(
        self,
        *,
        delivery_id: str | None = None,
        job_id: str | None = None,
        handler: str | None = None,
        include_done: bool = False,
    ) -> list[Delivery]:
        if delivery_id is not None:
            try:
                path = f"/deliveries/{_segment(delivery_id)}/replay"
                return (await self._call("POST", path, DeliveryList)).items
            except NotFound:
                return []
        body: dict[str, Any] = {"job_id": job_id, "handler": handler}
        if job_id is None and handler is None:
            body["all_dead"] = True
        else:
            body["include_done"] = include_done
        found = await self._call("POST", "/deliveries/replay", DeliveryList, json=_present(body))
        return found.items

    async def submit(
        self,
        provider: str,
        fields: dict[str, Any],
        *,
        metadata: dict[str, Any],
        task_id: str | None,
        notify_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        body = {
            "provider": provider,
            "input": fields,
            "metadata": metadata,
            "task_id": task_id,
            "notify_url": notify_url,
        }
        return await self._call("POST", "/jobs", Job, json=_present(body), headers=headers)


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _segment(value: str) -> str:
    """An id as one path segment: anything else is refused rather than sent."""
    import httpx

    if not value or "/" in value or value in (".", ".."):
        raise NotFound(f"no such id {value!r}")
    return httpx.URL("/" + value).raw_path.decode()[1:]


def _error_of(answer: httpx.Response) -> str | None:
    try:
        detail = answer.json().get("error")
    except (ValueError, AttributeError):
        return None
    return str(detail) if detail else None


def admin_token_for(settings: Settings) -> str | None:
    """RECEIVER_ADMIN_TOKEN, else the token a local `serve` generated beside its database."""
    from receiver.admin_token import stored_admin_token

    return stored_admin_token(settings)


@contextlib.asynccontextmanager
async def open_source(
    args: argparse.Namespace, *, with_handlers: bool = False
) -> AsyncIterator[Source]:
    """The admin API when RECEIVER_URL is set, else the database (opened and closed here).

    Without `with_handlers` (every command but `submit`) the database must exist already,
    and nothing is created: no database file, no admin token file.
    """
    import httpx

    settings = settings_from(args)
    if settings.url:
        token = admin_token_for(settings)
        if not token:
            raise ConfigError("RECEIVER_URL is set: RECEIVER_ADMIN_TOKEN is needed too")
        async with httpx.AsyncClient(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
            follow_redirects=False,
        ) as client:
            yield ApiSource(client)
        return
    if not with_handlers:
        from receiver.store import store_for

        require_database(settings)
        store = store_for(settings.database_url, timeout=settings.store_timeout)
        await store.open()
        try:
            yield StoreSource(store)
        finally:
            await store.close()
        return
    from receiver.runtime import Runtime

    # Submitting routes events to handlers, so it must know them.
    runtime = Runtime.build(settings)
    await runtime.store.open()
    try:
        yield StoreSource(runtime.store, runtime)
    finally:
        await runtime.client.aclose()
        await runtime.store.close()
