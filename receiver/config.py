"""Settings from `receiver.toml` and `RECEIVER_*` variables (variables win), via msgspec."""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import msgspec

from receiver.builtins.settings import (
    SECTIONS,
    CommandSettings,
    DownloadSettings,
    ForwardSettings,
    NotifySettings,
    env_value,
)
from receiver.costs import check_limits, parse_budgets
from receiver.errors import ConfigError
from receiver.groups import check_groups, parse_groups
from receiver.providers import PROVIDERS, GenericSettings, ProviderSettings
from receiver.providers.generic import check_generic, generic_from_env, split_secrets
from receiver.ratelimit import parse_networks
from receiver.urls import http_url

__all__ = [
    "DEFAULT_HANDLERS",
    "ENV_PREFIX",
    "MIN_TOKEN_LENGTH",
    "Settings",
    "check_token",
    "load_settings",
    "local_url",
    "parse_duration",
]

ENV_PREFIX = "RECEIVER_"
DEFAULT_HANDLERS = "handlers"  # a module of that name in the working directory, if any
# An admin or metrics token shorter than this could be guessed; 32 hex digits are 128 bits.
MIN_TOKEN_LENGTH = 32
log = logging.getLogger("receiver.config")


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything the receiver can be told; each field is also `RECEIVER_<FIELD>`."""

    database_url: str = "sqlite:///./receiver.db"
    # Unset (empty): this receiver's own address, http://RECEIVER_HOST:RECEIVER_PORT.
    public_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    handlers: str = DEFAULT_HANDLERS
    admin_token: str | None = None
    max_body_bytes: int = 1024 * 1024
    handler_max_attempts: int = 8
    handler_timeout: float = 300.0
    # Handlers mostly wait on the network; fewer slots than this fell behind ingest on one core.
    handler_concurrency: int = 64
    retry_base_delay: float = 1.0
    retry_max_delay: float = 3600.0
    poll_interval: float = 10.0
    poll_max_interval: float = 300.0
    # A callback-style job with no news for `deadline` seconds is polled; one still open
    # `give_up_after` seconds after it was created is failed.
    deadline: float = 900.0
    give_up_after: float = 86400.0
    circuit_failures: int = 5
    circuit_cooldown: float = 30.0
    # Failed authentication: a burst per client address and per token, refilled per second.
    auth_failure_burst: int = 20
    auth_failure_rate: float = 0.5
    trusted_proxies: str = ""  # addresses or networks whose X-Forwarded-For is believed
    # Refused requests kept for diagnosis, newest first; older ones are deleted past this.
    quarantine_max_rows: int = 10_000
    # Networks that fetches of provider-given URLs (download) may reach though not public.
    fetch_allow_networks: str = ""
    retry_after: int = 5
    store_timeout: float = 5.0  # longest wait for a locked store before a 503
    # Slow and idle clients (receiver.connections): the head must arrive within
    # head_timeout; the body within body_timeout plus a second per body_min_rate bytes.
    head_timeout: float = 10.0
    body_timeout: float = 10.0
    body_min_rate: int = 16 * 1024
    # Open connections, in all and per client address; unset: derived from RLIMIT_NOFILE.
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    shutdown_grace: float = 30.0  # after SIGTERM: time for in-flight requests and handlers
    # A worker whose heartbeat (sent every third of this) is older is dead: its work is taken over.
    worker_timeout: float = 15.0
    log_level: str = "WARNING"
    heartbeat_file: str | None = None  # `receiver worker` touches it while its loops run
    no_worker: bool = False  # `serve` only ingests; `receiver worker` runs handlers and polls
    # Rows of jobs that ended longer ago than this, and quarantine rows this old, are
    # deleted (receiver.retention): `30d`, `12h`, `90m`, seconds; 0 keeps everything.
    retention: str | float = "30d"
    log_format: str = "auto"  # json, text, or auto: text on a terminal, JSON lines otherwise
    url: str | None = None  # the CLI: a running receiver's base URL, to use its admin API
    metrics_token: str | None = None  # a scrape-only token for /metrics (the admin one works too)
    session_ttl: float = 12 * 3600.0  # seconds a dashboard login lasts
    # Spend limits per UTC day (receiver.costs): of all jobs, and per metadata value
    # (RECEIVER_BUDGETS="customer=acme:50", or [budgets.customer] acme = 50).
    budget_daily: float | None = None
    budgets: dict[str, dict[str, float]] = msgspec.field(default_factory=dict)
    # Provider groups (receiver.groups): a name submitted to like a provider, whose
    # members are tried in order ([groups] runway = ["apiframe", "rixapi"], or
    # RECEIVER_GROUPS="runway=apiframe,rixapi").
    groups: dict[str, list[str]] = msgspec.field(default_factory=dict)
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    # Standard Webhooks senders by name (RECEIVER_GENERIC_PROVIDERS, [generic.<name>]).
    generic: dict[str, GenericSettings] = msgspec.field(default_factory=dict)
    # The built-in handlers (receiver.builtins), each off until configured.
    forward: ForwardSettings = msgspec.field(default_factory=ForwardSettings)
    download: DownloadSettings = msgspec.field(default_factory=DownloadSettings)
    notify: NotifySettings = msgspec.field(default_factory=NotifySettings)
    command: CommandSettings = msgspec.field(default_factory=CommandSettings)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"RECEIVER_PORT must be from 1 to 65535, got {self.port}")
        if not self.public_url:  # follows the port, so callbacks reach where we listen
            self.public_url = local_url(self.host, self.port)
        if not _is_http_url(self.public_url):
            raise ConfigError("RECEIVER_PUBLIC_URL must be an absolute http(s) URL")
        if not self.database_url.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ConfigError(
                "RECEIVER_DATABASE_URL must start with sqlite:/// or postgresql://, "
                f"got {self.database_url.split(':', 1)[0]!r}"
            )
        for name, provider in self.providers.items():
            if name not in PROVIDERS:
                raise ConfigError(f"unknown provider {name!r} in settings")
            if provider.base_url is not None and not _is_http_url(provider.base_url):
                # The value is not echoed: a URL may carry credentials.
                raise ConfigError(f"RECEIVER_{name.upper()}_BASE_URL must be an http(s) URL")
            if provider.timeout <= 0:
                raise ConfigError(f"RECEIVER_{name.upper()}_TIMEOUT must be greater than 0")
            for field in ("deadline", "give_up_after"):
                if (getattr(provider, field) or 1) <= 0:
                    raise ConfigError(
                        f"RECEIVER_{name.upper()}_{field.upper()} must be greater than 0"
                    )
            if provider.max_running is not None and provider.max_running < 1:
                raise ConfigError(f"RECEIVER_{name.upper()}_MAX_RUNNING must be at least 1")
            if provider.poll_concurrency < 1:
                raise ConfigError(f"RECEIVER_{name.upper()}_POLL_CONCURRENCY must be at least 1")
            for field in ("price_per_job", "price_per_second"):
                price = getattr(provider, field)
                if price is not None and not 0 <= price < float("inf"):
                    raise ConfigError(
                        f"RECEIVER_{name.upper()}_{field.upper()} must be a number, 0 or more"
                    )
        check_generic(self.generic, builtin=PROVIDERS, fields=_FIELDS)
        check_groups(
            self.groups,
            providers={*PROVIDERS, *self.generic},
            members=[name for name, adapter in PROVIDERS.items() if adapter.takes_common],
        )
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(
                f"RECEIVER_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)},"
                f" got {self.log_level!r}"
            )
        if self.log_format not in ("auto", "json", "text"):
            raise ConfigError(
                f"RECEIVER_LOG_FORMAT must be json, text or auto, got {self.log_format!r}"
            )
        check_token("RECEIVER_ADMIN_TOKEN", self.admin_token)
        check_token("RECEIVER_METRICS_TOKEN", self.metrics_token)
        if self.url is not None and not _is_http_url(self.url):
            raise ConfigError("RECEIVER_URL must be an absolute http(s) URL")
        for name in ("retry_max_delay", "poll_max_interval", "retry_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RECEIVER_{name.upper()} must not be negative")
        for name in (
            "max_body_bytes",
            "handler_max_attempts",
            "handler_concurrency",
            "circuit_failures",
            "auth_failure_burst",
            "quarantine_max_rows",
            "body_min_rate",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"RECEIVER_{name.upper()} must be at least 1")
        if self.shutdown_grace < 0:
            raise ConfigError("RECEIVER_SHUTDOWN_GRACE must not be negative")
        if not self.worker_timeout >= 1:  # `not >=`: NaN is refused too
            raise ConfigError("RECEIVER_WORKER_TIMEOUT must be at least 1 (seconds)")
        for name in (
            "handler_timeout",
            "poll_interval",
            "retry_base_delay",
            "deadline",
            "give_up_after",
            "circuit_cooldown",
            "auth_failure_rate",
            "store_timeout",
            "head_timeout",
            "body_timeout",
            "session_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"RECEIVER_{name.upper()} must be greater than 0")
        self._check_connection_caps()
        check_limits(self.budget_daily, self.budgets)
        parse_networks(self.trusted_proxies)  # ConfigError naming the bad entry
        parse_networks(self.fetch_allow_networks, "RECEIVER_FETCH_ALLOW_NETWORKS")
        parse_duration(self.retention, name="RECEIVER_RETENTION")
        for section in (self.forward, self.download, self.notify, self.command):
            section.check()
        for name in sorted(set(self.generic) & set(SECTIONS)):  # RECEIVER_<NAME>_* is taken
            raise ConfigError(f"generic provider name {name!r} is reserved; choose another")

    def _check_connection_caps(self) -> None:
        for name in ("max_connections", "max_connections_per_client"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"RECEIVER_{name.upper()} must be at least 1")
        total, per_client = self.max_connections, self.max_connections_per_client
        if total is not None and per_client is not None and per_client > total:
            raise ConfigError(
                "RECEIVER_MAX_CONNECTIONS_PER_CLIENT must not exceed RECEIVER_MAX_CONNECTIONS"
            )

    def provider(self, name: str) -> ProviderSettings:
        if name in self.generic:
            return self.generic[name].gateway_settings()
        return self.providers.get(name) or ProviderSettings()

    def secrets(self) -> list[str]:
        """Every configured value that must never appear in a log line."""
        found = [self.admin_token, self.metrics_token, self.forward.secret, self.notify.url]
        for provider in self.providers.values():
            found += [provider.api_key, provider.webhook_secret]
        for generic in self.generic.values():
            found += [generic.api_key, *split_secrets(generic.webhook_secret)]
        return [value for value in found if value]

    def retention_seconds(self) -> float:
        """RECEIVER_RETENTION in seconds; 0 keeps everything."""
        return parse_duration(self.retention, name="RECEIVER_RETENTION")

    def deadline_for(self, provider: str) -> float:
        """Seconds without news after which a callback-style job is polled."""
        return self.provider(provider).deadline or self.deadline

    def give_up_for(self, provider: str) -> float:
        """Age in seconds at which a job still open is failed."""
        return self.provider(provider).give_up_after or self.give_up_after


def local_url(host: str, port: int) -> str:
    """This machine's URL of a receiver listening on `host:port` (any address: loopback)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_token(name: str, value: str | None) -> None:
    """ConfigError unless `value` is unset or long enough; the value itself is never echoed."""
    if value is None:
        return
    length = len(value.strip())
    if length < MIN_TOKEN_LENGTH:
        got = "it is empty" if length == 0 else f"it has {length}"
        raise ConfigError(
            f"{name} must be at least {MIN_TOKEN_LENGTH} characters ({got});"
            " make one with `openssl rand -hex 32`"
        )


_FIELDS = {
    f for f in Settings.__struct_fields__ if f not in ("providers", "generic") and f not in SECTIONS
}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: str | float, *, name: str) -> float:
    """Seconds from `30d`, `12h`, `90m`, `45s` or a bare number of seconds (0 too).

    ConfigError names the setting `name` when `value` is none of these.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            shown = str(value)[:40]
            raise ConfigError(
                f"{name} must be a duration such as 30d, 12h, 90m or seconds: {shown!r}"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 0 <= seconds < float("inf"):
        raise ConfigError(f"{name} must be 0 (keep everything) or a positive duration")
    return seconds


def _is_http_url(value: str) -> bool:
    """Whether `value` is an absolute http(s) URL with a host."""
    return http_url(value) is not None


_PROVIDER_FIELDS = set(ProviderSettings.__struct_fields__)


def _from_env(environ: Mapping[str, str], skip: Collection[str] = ()) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    providers: dict[str, dict[str, str]] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "RECEIVER_CONFIG" or key in skip:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "budgets":
            raw[name] = parse_budgets(value)
            continue
        if name == "groups":
            raw[name] = parse_groups(value)
            continue
        if name in _FIELDS:
            raw[name] = value
            continue
        section = _section_field(name)
        if section is not None:
            table, field = section
            raw.setdefault(table, {})[field] = env_value(table, field, value)
            continue
        for provider in PROVIDERS:
            prefix = provider + "_"
            if name.startswith(prefix) and name[len(prefix) :] in _PROVIDER_FIELDS:
                providers.setdefault(provider, {})[name[len(prefix) :]] = value
                break
        else:
            log.warning("ignoring unknown setting %s", key)
    if providers:
        raw["providers"] = providers
    return raw


def _section_field(name: str) -> tuple[str, str] | None:
    """(section, field) of a built-in handler's variable, e.g. forward_urls -> (forward, urls)."""
    for table, (kind, bare) in SECTIONS.items():
        if name == table and bare is not None:
            return table, bare
        field = name.removeprefix(table + "_")
        if field != name and field in kind.__struct_fields__:
            return table, field
    return None


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _convert(raw: Any, kind: type[Any], prefix: str) -> Any:
    """msgspec.convert, with a failure turned into one line naming the variable at fault."""
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        detail, _, where = str(exc).partition(" - at ")
        path = where.strip("`").removeprefix("$").strip(".")
        unknown = re.match(r"Object contains unknown field `([^`]+)`", detail)
        if unknown:
            path, detail = f"{path}.{unknown.group(1)}".strip("."), "unknown setting"
        name = prefix + path.replace(".", "_").upper() if path else prefix.rstrip("_")
        raise ConfigError(f"{name}: {detail}") from None


def load_settings(
    environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Read `receiver.toml` (or RECEIVER_CONFIG), then `RECEIVER_*`; ConfigError names a bad one."""
    environ = os.environ if environ is None else environ
    path = Path(config_file or environ.get("RECEIVER_CONFIG") or "receiver.toml")
    from_file: dict[str, Any] = {}
    if path.is_file():
        try:
            from_file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    elif config_file or environ.get("RECEIVER_CONFIG"):
        raise ConfigError(f"configuration file {path} does not exist")
    generic = from_file.pop("generic", None) or {}
    if not isinstance(generic, dict) or not all(isinstance(v, dict) for v in generic.values()):
        raise ConfigError("generic: expected tables of provider settings, [generic.<name>]")
    env_generic, generic_keys = generic_from_env(environ, declared=generic)
    raw = _merge(from_file, _from_env(environ, skip=generic_keys))
    raw["generic"] = {
        name: _convert(values, GenericSettings, f"{ENV_PREFIX}{name.upper()}_")
        for name, values in _merge(generic, env_generic).items()
    }
    providers = raw.pop("providers", None) or {}
    if not isinstance(providers, dict):
        raise ConfigError("providers: expected a table of provider settings")
    for name in providers:
        if name not in PROVIDERS:
            raise ConfigError(f"unknown provider {name!r} in settings")
    raw["providers"] = {
        name: _convert(values, ProviderSettings, f"{ENV_PREFIX}{name.upper()}_")
        for name, values in providers.items()
    }
    settings: Settings = _convert(raw, Settings, ENV_PREFIX)
    return settings
