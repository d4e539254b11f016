"""The provider seam: what every adapter knows about one provider's API, and how we call it.

An adapter is pure translation: it builds the provider's own requests and turns the
provider's answers and callbacks into canonical `Update`s. `ProviderGateway` does the
HTTP, always against the configured base URL, so nothing in a callback body can pick
a URL we fetch.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import enum
import json
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from receiver.errors import ConfigError, ProviderError, UnparseablePayload
from receiver.models import Update

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CallbackStyle",
    "Created",
    "Provider",
    "ProviderGateway",
    "ProviderRequest",
    "ProviderSettings",
    "retry_after_seconds",
    "valid_task_id",
]

_decode_json = msgspec.json.Decoder().decode
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def valid_task_id(task_id: object) -> bool:
    """Task ids are put in URLs and queries: only a short, plain token is accepted."""
    return isinstance(task_id, str) and _TASK_ID.fullmatch(task_id) is not None


class CallbackStyle(enum.StrEnum):
    """How results reach us from a provider."""

    SECRET_POST = "secret_post"  # POST with our secret echoed in x-webhook-secret
    POST = "post"  # unauthenticated POST on every status change
    SIGNED_POST = "signed_post"  # POST signed with Standard Webhooks (generic providers)
    NUDGE = "nudge"  # a bare GET ?uuid= that only says "ask me"
    POLL = "poll"  # no callbacks: we poll the status API
    SYNC = "sync"  # the create call answers with the result


class ProviderSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-provider configuration: RECEIVER_<PROVIDER>_BASE_URL, _API_KEY, _WEBHOOK_SECRET,
    _TIMEOUT, _DEADLINE, _GIVE_UP_AFTER, _POLL_CONCURRENCY, _CONFIRM_TERMINAL, _PRICE_PER_JOB,
    _PRICE_PER_SECOND, _MAX_RUNNING."""

    base_url: str | None = None
    api_key: str | None = None
    webhook_secret: str | None = None
    timeout: float = 30.0
    # Overdue polling; None takes RECEIVER_DEADLINE / RECEIVER_GIVE_UP_AFTER.
    deadline: float | None = None
    give_up_after: float | None = None
    poll_concurrency: int = 4
    # An unauthenticated provider's final callback is checked against its status API.
    confirm_terminal: bool = True
    # What a job costs here (receiver.costs): per job, plus per second of video.
    price_per_job: float | None = None
    price_per_second: float | None = None
    # Jobs in flight here at most, across every process (receiver.slots); None: no cap.
    max_running: int | None = None


class ProviderRequest(msgspec.Struct, kw_only=True):
    """A request to a provider, relative to its configured base URL."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None
    # name -> (filename, bytes, content type), for multipart uploads
    files: dict[str, tuple[str, bytes, str]] | None = None


class Created(msgspec.Struct, kw_only=True):
    """What a create call told us: the provider's task id and, for a synchronous one, the result."""

    task_id: str | None
    update: Update | None = None


class Provider(abc.ABC):
    """One provider's API, as translation only (no I/O)."""

    name: ClassVar[str]
    callback_style: ClassVar[CallbackStyle]
    # Input fields that name a local file to upload; only a local user may use them.
    file_fields: ClassVar[frozenset[str]] = frozenset()
    # Whether every request needs RECEIVER_<NAME>_API_KEY (a generic provider's is optional).
    needs_api_key: ClassVar[bool] = True
    # Every input field `create_request` knows, so `receiver submit` can refuse a misspelt
    # one before any job exists; empty: the adapter declares none and any name passes.
    input_fields: ClassVar[tuple[str, ...]] = ()

    def required_fields(self, fields: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields the provider refuses a create without, for the endpoint `fields` pick
        (ProviderError for an endpoint it does not have)."""
        return ()

    @abc.abstractmethod
    def auth_headers(self, api_key: str) -> dict[str, str]:
        """The headers that authenticate our requests to this provider."""

    @abc.abstractmethod
    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        """The provider's own create request for the user's fields, callback fields filled in."""

    @abc.abstractmethod
    def parse_created(self, body: Any) -> Created:
        """Read a 2xx create answer; raise ProviderError when it reports a failure."""

    def parse_callback(self, body: dict[str, Any]) -> Update:
        """Turn a callback body into an Update; raise UnparseablePayload when it cannot."""
        raise UnparseablePayload(f"{self.name} does not send callback bodies")

    def status_request(self, task_id: str) -> ProviderRequest | None:
        """The request that pulls a task's status, or None if this provider has none."""
        return None

    def parse_status(self, body: Any, task_id: str) -> Update:
        """Turn a status answer into an Update; raise UnparseablePayload when it cannot."""
        raise UnparseablePayload(f"{self.name} has no status API")

    def common_request(self, common: Mapping[str, Any]) -> dict[str, Any]:
        """This provider's own input fields for a provider group's common ones (prompt,
        duration, ratio, image_url, model: receiver.groups); ProviderError when they
        cannot be expressed here, so the group moves on without calling the provider."""
        raise ProviderError(f"{self.name} does not take a provider group's fields")

    @property
    def takes_common(self) -> bool:
        """Whether this provider can be a group member (its adapter maps common fields)."""
        return type(self).common_request is not Provider.common_request

    @property
    def can_pull(self) -> bool:
        """Whether this provider has a status API (its adapter overrides `status_request`)."""
        return type(self).status_request is not Provider.status_request

    def error_message(self, body: Any, status_code: int) -> str:
        """A readable message from a provider's error answer."""
        if isinstance(body, dict):
            for key in ("message", "msg", "error", "detail", "errors"):
                value = body.get(key)
                if isinstance(value, dict):
                    value = value.get("message") or value.get("msg")
                if value:
                    return f"{self.name} answered {status_code}: {str(value)[:500]}"
        return f"{self.name} answered {status_code}"


def _decode_answer(content: bytes) -> Any:
    """A provider's JSON answer, or None when there is none we could keep.

    The standard library's decoder alone (httpx's `response.json()`) lets through lone
    surrogates, which no store can encode, and nesting past the recursion limit; NaN and
    Infinity, which it also reads, are tolerated as null.
    """
    if not content:
        return None
    try:
        return _decode_json(content)
    except (ValueError, RecursionError):  # DecodeError, broken UTF-8, deep nesting
        pass
    try:
        body = json.loads(content, parse_constant=lambda _: None)
        msgspec.json.encode(body)  # raises on a lone surrogate
    except (ValueError, RecursionError):
        return None
    return body


# A gateway's or proxy's answer for a request the provider itself may have carried out.
_GATEWAY_UNSURE = frozenset({408, 502, 503, 504})


def _sent_then_lost(exc: Exception) -> bool:
    """Whether an httpx error came once the request may have reached the provider: a
    timeout or a broken connection while sending or reading. Not a connect or pool error:
    a request that never left was certainly not carried out."""
    import httpx

    lost = (
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
    )
    return isinstance(exc, lost)


_MAX_RETRY_AFTER = 3600.0  # a provider asking for more is capped, not obeyed for days


def retry_after_seconds(value: str | None, *, at: float | None = None) -> float | None:
    """Retry-After (seconds or an HTTP date) as seconds from now, capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if at is None else at
    return min(max(0.0, when.timestamp() - current), _MAX_RETRY_AFTER)


class ProviderGateway:
    """Sends an adapter's requests over HTTP to the provider's configured base URL."""

    def __init__(self, adapter: Provider, settings: ProviderSettings, client: httpx.AsyncClient):
        self.adapter = adapter
        self.settings = settings
        self.client = client

    def missing_setting(self) -> str | None:
        """The first setting this provider cannot be called without, if one is unset."""
        name = f"RECEIVER_{self.adapter.name.upper()}"
        if not self.settings.base_url:
            return f"{name}_BASE_URL"
        if self.adapter.needs_api_key and not self.settings.api_key:
            return f"{name}_API_KEY"
        return None

    def configured_base_url(self) -> str:
        """The base URL, once every needed setting is there; ConfigError naming one that is
        not (never sent half-configured: an empty key is a malformed header)."""
        missing = self.missing_setting()
        if missing is not None or not self.settings.base_url:
            raise ConfigError(f"{missing} is not set: the provider cannot be called without it")
        return self.settings.base_url.rstrip("/")

    async def send(self, request: ProviderRequest) -> Any:
        """Send one request and return the decoded JSON answer; ProviderError on failure
        (`outcome_unknown` when the provider may have carried it out all the same)."""
        import httpx

        url = self.configured_base_url() + request.path
        headers = self.adapter.auth_headers(self.settings.api_key or "")
        try:
            response = await self.client.request(
                request.method,
                url,
                json=request.json if request.files is None else None,
                params=request.params,
                data=request.data,
                files=request.files,
                headers=headers,
                timeout=self.settings.timeout,
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"{self.adapter.name} unreachable: {type(exc).__name__}",
                retryable=True,
                outcome_unknown=_sent_then_lost(exc),
            ) from None
        body = _decode_answer(response.content)
        if response.status_code >= 300:
            raise ProviderError(
                self.adapter.error_message(body, response.status_code),
                status_code=response.status_code,
                retryable=response.status_code == 429 or response.status_code >= 500,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
                outcome_unknown=response.status_code in _GATEWAY_UNSURE,
            )
        return body

    async def create(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> Created:
        # In a thread: an adapter may read an upload from disk (artvisum takes files).
        request = await asyncio.to_thread(
            self.adapter.create_request, fields, hook_url=hook_url, webhook_secret=webhook_secret
        )
        return self.adapter.parse_created(await self.send(request))

    async def pull(self, task_id: str) -> Update:
        """Ask the provider's status API about one task."""
        if not valid_task_id(task_id):
            raise UnparseablePayload("task id is not a plain token")
        request = self.adapter.status_request(task_id)
        if request is None:
            raise ProviderError(f"{self.adapter.name} has no status API")
        return self.adapter.parse_status(await self.send(request), task_id)
