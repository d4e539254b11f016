"""`receiver doctor`: check the configuration, the database, the handlers, and whether
RECEIVER_PUBLIC_URL reaches this receiver.

The public URL check asks `$RECEIVER_PUBLIC_URL/healthz` for the receiver's instance id;
with `--url` it compares it with the instance answering there, so a public URL that
reaches some other receiver (an old tunnel, another deploy) is caught.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from receiver.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    NoDatabase,
    print_json,
    require_database,
    settings_from,
)
from receiver.cli.output import colour_enabled, paint
from receiver.cli.source import admin_token_for, client_options
from receiver.config import DEFAULT_HANDLERS, Settings
from receiver.errors import ConfigError, ReceiverError

if TYPE_CHECKING:
    import httpx

__all__ = ["Check", "register"]


class Check(msgspec.Struct, kw_only=True):
    """One finding: `ok` true, false (a failure) or null (a warning)."""

    name: str
    ok: bool | None
    detail: str


def register(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor", help="check configuration, database, handlers and that the public URL reaches us"
    )
    client_options(doctor)
    doctor.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for each HTTP check"
    )
    doctor.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checks = asyncio.run(diagnose(args))
    failed = any(check.ok is False for check in checks)
    if args.json:
        print_json({"ok": not failed, "checks": checks})
    else:
        colour = colour_enabled()
        marks = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("warn", "yellow")}
        for check in checks:
            word, hue = marks[check.ok]
            detail = check.detail.replace("\n", "\n" + " " * 19)  # more lines, under the first
            print(f"{paint(f'{word:4}', hue, enabled=colour)}  {check.name:12} {detail}")
    return EXIT_JOB_FAILED if failed else EXIT_OK


async def diagnose(args: argparse.Namespace) -> list[Check]:
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        return [Check(name="config", ok=False, detail=str(exc))]
    checks = [Check(name="config", ok=True, detail="settings load")]
    checks.append(await _database(settings))
    checks.append(_handlers(settings))
    checks.append(_providers(settings))
    checks.append(_admin_token(settings))
    import httpx

    async with httpx.AsyncClient(timeout=args.timeout, follow_redirects=False) as client:
        mine = None
        if settings.url:
            check, mine = await _admin_api(client, settings)
            checks.append(check)
        checks.append(await _public_url(client, settings, mine))
    return checks


async def _database(settings: Settings) -> Check:
    from receiver.store import display_url, store_for

    where = display_url(settings.database_url)
    try:
        require_database(settings)  # a doctor only looks: it never creates a database
    except NoDatabase as exc:
        return Check(name="database", ok=False, detail=str(exc))
    try:
        store = store_for(settings.database_url)
        await store.open()
        try:
            summary = await store.delivery_summary()
        finally:
            await store.close()
    except ReceiverError as exc:
        return Check(name="database", ok=False, detail=f"{where}: {exc}")
    counts = summary.counts
    detail = (
        f"{where}: schema up to date; deliveries pending {counts['pending']}, dead {counts['dead']}"
    )
    if counts["dead"]:
        return Check(name="database", ok=None, detail=detail + " (see: receiver deliveries --dead)")
    return Check(name="database", ok=True, detail=detail)


def _handlers(settings: Settings) -> Check:
    """The handlers as `serve` would load them, with the same line for what is wrong."""
    from receiver.builtins import install_builtins
    from receiver.dispatch import load_handlers
    from receiver.outgoing import lazy_client
    from receiver.providers import PROVIDERS, generic_providers
    from receiver.registration import check_handlers, handlers_warning
    from receiver.store import store_for

    if not settings.handlers:
        return Check(name="handlers", ok=None, detail="RECEIVER_HANDLERS is empty: no handlers")
    try:
        registry = load_handlers(settings.handlers, required=settings.handlers != DEFAULT_HANDLERS)
        registry = registry.layered()
        builtins = install_builtins(
            registry, settings, client=lazy_client(), store=store_for(settings.database_url)
        )
        check_handlers(registry, {*PROVIDERS, *generic_providers(settings.generic)})
    except ConfigError as exc:
        return Check(name="handlers", ok=False, detail=str(exc))
    warning = handlers_warning(settings.handlers, registry, builtins)
    if warning:
        return Check(name="handlers", ok=None, detail=warning)
    names = sorted(registry.handlers)
    return Check(name="handlers", ok=True, detail=f"{len(names)}: {', '.join(names)}")


def _providers(settings: Settings) -> Check:
    from receiver.providers import PROVIDERS

    ready = [
        name
        for name in sorted(PROVIDERS)
        if settings.provider(name).base_url and settings.provider(name).api_key
    ]
    if not ready:
        return Check(
            name="providers",
            ok=None,
            detail="none configured (RECEIVER_<PROVIDER>_BASE_URL and _API_KEY)",
        )
    return Check(name="providers", ok=True, detail="configured: " + ", ".join(ready))


def _admin_token(settings: Settings) -> Check:
    if settings.admin_token:
        return Check(name="admin token", ok=True, detail="RECEIVER_ADMIN_TOKEN is set")
    try:
        found = admin_token_for(settings)
    except ConfigError as exc:  # a token file open to others, or too short
        return Check(name="admin token", ok=False, detail=str(exc))
    if found:
        return Check(
            name="admin token", ok=True, detail="generated one is kept beside the database"
        )
    return Check(name="admin token", ok=None, detail="none yet: `serve` generates one at start")


async def _health(client: httpx.AsyncClient, base: str) -> str:
    """The instance id answering `base/healthz`; ReceiverError saying why not."""
    import httpx

    try:
        answer = await client.get(base.rstrip("/") + "/healthz")
    except httpx.HTTPError as exc:
        raise ReceiverError(f"no answer from {base}: {type(exc).__name__}") from None
    if answer.status_code != 200:
        raise ReceiverError(f"{base}/healthz answered {answer.status_code}")
    try:
        instance = answer.json().get("instance")
    except (ValueError, AttributeError):
        instance = None
    if not isinstance(instance, str):
        raise ReceiverError(f"{base}/healthz does not answer like a receiver")
    return instance


async def _admin_api(client: httpx.AsyncClient, settings: Settings) -> tuple[Check, str | None]:
    assert settings.url is not None
    try:
        instance = await _health(client, settings.url)
    except ReceiverError as exc:
        return Check(name="admin API", ok=False, detail=str(exc)), None
    token = admin_token_for(settings) or ""
    answer = await client.get(
        settings.url.rstrip("/") + "/jobs",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {token}"},
    )
    if answer.status_code == 401:
        return Check(name="admin API", ok=False, detail="the admin token is refused"), instance
    return Check(name="admin API", ok=True, detail=f"{settings.url} ({instance})"), instance


async def _public_url(client: httpx.AsyncClient, settings: Settings, mine: str | None) -> Check:
    url = settings.public_url
    host = urlsplit(url).hostname or ""
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    try:
        seen = await _health(client, url)
    except ReceiverError as exc:
        return Check(name="public URL", ok=False, detail=f"{url}: {exc}")
    if mine is not None and seen != mine:
        return Check(
            name="public URL",
            ok=False,
            detail=f"{url} reaches another receiver ({seen}, not {mine})",
        )
    same = "this receiver" if mine else f"a receiver ({seen}; add --url to check it is this one)"
    if loopback:
        return Check(
            name="public URL",
            ok=None,
            detail=f"{url} reaches {same}, but providers on the internet cannot reach loopback",
        )
    return Check(name="public URL", ok=True, detail=f"{url} reaches {same}")
