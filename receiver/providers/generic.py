"""Generic providers: any sender that signs its callbacks with Standard Webhooks.

A generic provider is declared by name in the settings (`RECEIVER_GENERIC_PROVIDERS=acme`
or a `[generic.acme]` table) with its `whsec_` secrets, and takes callbacks on
`POST /hooks/acme`. Bodies follow the Standard Webhooks convention
`{"type": "job.succeeded", "timestamp": "...", "data": {...}}`; the task, status,
progress, result and error are read from `data` with a table of common words, and a
per-provider `status_map` for the rest. The signature itself is checked by the route,
on the raw bytes, with `authenticate`: the `webhook-*` headers, or Svix's `svix-*` ones
(see receiver.standard_webhooks).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, ClassVar, Literal, cast

import msgspec

from receiver.errors import ConfigError, ProviderError, UnparseablePayload
from receiver.models import Status, Update
from receiver.providers.base import (
    CallbackStyle,
    Created,
    Provider,
    ProviderRequest,
    ProviderSettings,
    valid_task_id,
)
from receiver.providers.coerce import as_str, progress
from receiver.standard_webhooks import DEFAULT_TOLERANCE, decode_secret, verify

__all__ = [
    "GENERIC_ENV",
    "STATUS_WORDS",
    "GenericProvider",
    "GenericSettings",
    "check_generic",
    "generic_from_env",
    "generic_providers",
    "split_secrets",
]

GENERIC_ENV = "RECEIVER_GENERIC_PROVIDERS"
_PREFIX = "RECEIVER_"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_RESERVED = frozenset({"generic", "hooks", "jobs", "admin"})
_MAX_SECRETS = 8  # rotation needs two or three; more is a mistake

# The words senders commonly use, after lower-casing and turning "-" and " " into "_".
STATUS_WORDS: Mapping[str, Status] = {
    **dict.fromkeys(
        ("queued", "pending", "submitted", "created", "waiting", "scheduled", "accepted"),
        Status.QUEUED,
    ),
    **dict.fromkeys(
        ("running", "processing", "in_progress", "started", "progress", "generating", "active"),
        Status.RUNNING,
    ),
    **dict.fromkeys(
        ("succeeded", "success", "successful", "completed", "complete", "done", "finished"),
        Status.SUCCEEDED,
    ),
    **dict.fromkeys(
        ("failed", "failure", "error", "errored", "rejected", "timed_out", "expired"),
        Status.FAILED,
    ),
    **dict.fromkeys(("cancelled", "canceled", "aborted"), Status.CANCELLED),
}

_TASK_KEYS = ("task_id", "id")
_RESULT_KEYS = ("result_url", "video_url", "output_url", "url")
_PREVIEW_KEYS = ("preview_url", "thumbnail_url", "poster")


class GenericSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One generic provider's settings (`RECEIVER_<NAME>_...` or `[generic.<name>]`)."""

    # One or several whsec_ secrets, separated by spaces or commas, during a rotation.
    webhook_secret: str | None = None
    # Seconds a webhook-timestamp may be off, both ways.
    tolerance: float = DEFAULT_TOLERANCE
    # Raw status (or `type`) -> canonical status, tried before the built-in words.
    status_map: dict[str, str] = msgspec.field(default_factory=dict)
    # How `progress` is written: "auto" guesses 0..1 or 0..100 per value.
    progress_scale: Literal["auto", "fraction", "percent"] = "auto"
    # An optional status API: base URL, a path with `{task_id}`, a bearer key.
    base_url: str | None = None
    status_path: str | None = None
    api_key: str | None = None
    timeout: float = 30.0
    # Overdue polling, as for a built-in provider; None takes the receiver's defaults.
    deadline: float | None = None
    give_up_after: float | None = None
    poll_concurrency: int = 4

    def gateway_settings(self) -> ProviderSettings:
        """The settings a built-in provider would have: status API and overdue polling."""
        return ProviderSettings(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            deadline=self.deadline,
            give_up_after=self.give_up_after,
            poll_concurrency=self.poll_concurrency,
        )


def split_secrets(value: str | None) -> list[str]:
    """The secrets in a `webhook_secret` value: separated by spaces or commas."""
    return [part for part in re.split(r"[\s,]+", value or "") if part]


def _ordinal(index: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(index, f"{index}th")


def check_generic(
    generic: Mapping[str, GenericSettings], *, builtin: Collection[str], fields: Collection[str]
) -> None:
    """Raise ConfigError for a generic provider that cannot work; a secret is never echoed.

    `builtin` are the built-in providers' names and `fields` the receiver's own settings,
    whose variables a provider's `RECEIVER_<NAME>_...` must not shadow.
    """
    for name, settings in generic.items():
        env = f"{_PREFIX}{name.upper()}_"
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"generic provider name {name[:40]!r} must be a lower-case slug"
                " (a letter, then letters, digits or _; at most 32)"
            )
        if name in builtin:
            raise ConfigError(f"generic provider {name!r} clashes with the built-in provider")
        shadowed = [f for f in GenericSettings.__struct_fields__ if f"{name}_{f}" in fields]
        if name in _RESERVED or shadowed:
            raise ConfigError(f"generic provider name {name!r} is reserved; choose another")
        secrets = split_secrets(settings.webhook_secret)
        if not secrets:
            raise ConfigError(f"{env}WEBHOOK_SECRET is required for generic provider {name!r}")
        if len(secrets) > _MAX_SECRETS:
            raise ConfigError(f"{env}WEBHOOK_SECRET holds more than {_MAX_SECRETS} secrets")
        for index, secret in enumerate(secrets, 1):
            try:
                decode_secret(secret)
            except ValueError:
                raise ConfigError(
                    f"{env}WEBHOOK_SECRET: the {_ordinal(index)} secret is not a Standard"
                    " Webhooks secret ('whsec_' then base64 of at least 16 bytes)"
                ) from None
        if not 0 < settings.tolerance <= 86400:
            raise ConfigError(f"{env}TOLERANCE must be more than 0 and at most 86400 seconds")
        for field in ("timeout", "deadline", "give_up_after"):
            if (getattr(settings, field) or 1) <= 0:
                raise ConfigError(f"{env}{field.upper()} must be greater than 0")
        if settings.poll_concurrency < 1:
            raise ConfigError(f"{env}POLL_CONCURRENCY must be at least 1")
        for raw, canonical in settings.status_map.items():
            if canonical not in Status.__members__.values():
                raise ConfigError(
                    f"{env}STATUS_MAP: {raw[:40]!r} maps to {canonical[:40]!r},"
                    f" not one of {', '.join(Status)}"
                )
        if settings.status_path is not None:
            path = settings.status_path
            if not path.startswith("/") or path.count("{task_id}") != 1:
                raise ConfigError(f"{env}STATUS_PATH must start with / and hold {{task_id}} once")
            if path.replace("{task_id}", "").count("{") or path.count("}") != 1:
                raise ConfigError(f"{env}STATUS_PATH may hold no placeholder but {{task_id}}")
            if not settings.base_url:
                raise ConfigError(f"{env}STATUS_PATH needs {env}BASE_URL")


def _status_map(value: str) -> dict[str, str]:
    """`RECEIVER_<NAME>_STATUS_MAP` as `raw=canonical` pairs separated by commas."""
    pairs: dict[str, str] = {}
    for item in value.split(","):
        raw, sep, canonical = item.partition("=")
        if item.strip() and not sep:
            raise ConfigError(f"status map entry {item.strip()[:40]!r} is not raw=canonical")
        if sep:
            pairs[raw.strip()] = canonical.strip()
    return pairs


def generic_from_env(
    environ: Mapping[str, str], declared: Collection[str] = ()
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Generic providers from `RECEIVER_GENERIC_PROVIDERS` and their `RECEIVER_<NAME>_*`.

    `declared` are names already declared elsewhere (the toml's `[generic.*]` tables),
    whose variables are read too. Returns the raw settings per name, and the variables
    used, so the caller does not warn about them.
    """
    listed = environ.get(GENERIC_ENV, "")
    names = {part.lower() for part in re.split(r"[\s,]+", listed) if part}
    raw: dict[str, dict[str, Any]] = {name: {} for name in names}
    used = {GENERIC_ENV} if GENERIC_ENV in environ else set()
    for name in names | set(declared):
        for field in GenericSettings.__struct_fields__:
            key = f"{_PREFIX}{name.upper()}_{field.upper()}"
            if key not in environ:
                continue
            value: Any = environ[key]
            if field == "status_map":
                try:
                    value = _status_map(value)
                except ConfigError as exc:
                    raise ConfigError(f"{key}: {exc}") from None
            raw.setdefault(name, {})[field] = value
            used.add(key)
    return raw, used


def _words(value: str) -> list[str]:
    """The keys a raw status is looked up by: as sent, normalised, and its last dotted part."""
    normal = re.sub(r"[\s-]+", "_", value.strip().lower())
    return [value, normal, normal.rsplit(".", 1)[-1]]


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = as_str(data.get(key))
        if value is not None:
            return value
    return None


class GenericProvider(Provider):
    """A Standard Webhooks sender configured by name; `generic_providers` makes one per name."""

    name: ClassVar[str] = "generic"
    callback_style: ClassVar[CallbackStyle] = CallbackStyle.SIGNED_POST
    needs_api_key: ClassVar[bool] = False

    def __init__(self, settings: GenericSettings):
        self.settings = settings
        self.keys = tuple(decode_secret(key) for key in split_secrets(settings.webhook_secret))
        self.status_map = {raw: Status(canonical) for raw, canonical in settings.status_map.items()}
        scale = settings.progress_scale
        self._percent = None if scale == "auto" else scale == "percent"

    def authenticate(
        self, body: bytes, headers: Mapping[str, str], *, now: float | None = None
    ) -> str:
        """The webhook-id of a genuine message, else SignatureError; `body` is the raw bytes."""
        return verify(body, headers, self.keys, tolerance=self.settings.tolerance, now=now)

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def create_request(
        self, fields: Mapping[str, Any], *, hook_url: str | None, webhook_secret: str | None
    ) -> ProviderRequest:
        raise ProviderError(f"{self.name} is a generic provider: jobs are created by the sender")

    def parse_created(self, body: Any) -> Created:
        raise ProviderError(f"{self.name} is a generic provider: jobs are created by the sender")

    def parse_callback(self, body: dict[str, Any]) -> Update:
        return self._update(body, None)

    @property
    def can_pull(self) -> bool:
        return self.settings.status_path is not None and bool(self.settings.base_url)

    def status_request(self, task_id: str) -> ProviderRequest | None:
        # The gateway has checked `task_id` with valid_task_id: it is safe in a path.
        if self.settings.status_path is None:
            return None
        return ProviderRequest(
            method="GET", path=self.settings.status_path.replace("{task_id}", task_id)
        )

    def parse_status(self, body: Any, task_id: str) -> Update:
        if not isinstance(body, dict):
            raise UnparseablePayload(f"{self.name} status answer is not an object")
        return self._update(body, task_id)

    def _status(self, data: Mapping[str, Any], envelope: Mapping[str, Any]) -> tuple[Status, str]:
        """The status from `data.status`, else from the event `type`; the raw word beside it."""
        for raw in (as_str(data.get("status")), as_str(envelope.get("type"))):
            if raw is None:
                continue
            for word in _words(raw):
                found = self.status_map.get(word) or STATUS_WORDS.get(word)
                if found is not None:
                    return found, raw
        raise UnparseablePayload(f"{self.name} body has no status this receiver knows")

    def _update(self, body: dict[str, Any], task_id: str | None) -> Update:
        data = body.get("data")
        if not isinstance(data, dict):
            data = body  # a sender without the envelope: the fields are at the top
        status, raw_status = self._status(data, body)
        found = _first(data, _TASK_KEYS) or task_id
        if not valid_task_id(found):
            raise UnparseablePayload(f"{self.name} body has no usable task id")
        error = data.get("error")
        error_code = as_str(data.get("error_code"))
        if isinstance(error, dict):
            error_code = error_code or as_str(error.get("code"))
            error = error.get("message")
        message = as_str(error) or as_str(data.get("error_message")) or as_str(data.get("message"))
        failed = status in (Status.FAILED, Status.CANCELLED)
        return Update(
            status=status,
            raw_status=raw_status,
            task_id=found,
            progress=1.0
            if status is Status.SUCCEEDED
            else progress(data.get("progress"), percent=self._percent),
            result_url=_first(data, _RESULT_KEYS),
            preview_url=_first(data, _PREVIEW_KEYS),
            error=message[:1000] if failed and message else None,
            error_code=error_code[:100] if failed and error_code else None,
            payload=body,
        )


def generic_providers(generic: Mapping[str, GenericSettings]) -> dict[str, Provider]:
    """An adapter per configured generic provider, each answering to its own name."""
    adapters: dict[str, Provider] = {}
    for name, settings in generic.items():
        adapter_class = type(f"Generic_{name}", (GenericProvider,), {"name": name})
        adapters[name] = cast(GenericProvider, adapter_class(settings))
    return adapters
