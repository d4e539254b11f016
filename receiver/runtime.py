"""The running receiver's parts, built once at start and shared by routes and loops."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from receiver.admin_token import admin_token_file, ensure_admin_token
from receiver.answers import AnswerLog
from receiver.builtins import install_builtins
from receiver.config import DEFAULT_HANDLERS, Settings
from receiver.costs import Pricing
from receiver.dispatch import Dispatcher, Registry, load_handlers
from receiver.heartbeat import Heartbeat
from receiver.ingest import Ingest
from receiver.outgoing import lazy_client
from receiver.poller import Poller
from receiver.provider_limits import ProviderLimits
from receiver.providers import PROVIDERS, Provider, ProviderGateway, generic_providers
from receiver.ratelimit import FailureLimiter, Network, parse_networks
from receiver.refusals import Quarantine
from receiver.registration import check_handlers
from receiver.retention import Pruner
from receiver.slots import Slots
from receiver.store import Store, store_for
from receiver.submit import Submitter
from receiver.verify import digest

if TYPE_CHECKING:
    import httpx

__all__ = ["Runtime", "admin_token_file", "ensure_admin_token"]

log = logging.getLogger("receiver")


@dataclasses.dataclass(kw_only=True)
class Runtime:
    """Everything a route or a loop needs; one per app."""

    settings: Settings
    store: Store
    handlers: Registry
    client: httpx.AsyncClient
    gateways: dict[str, ProviderGateway]
    ingest: Ingest
    dispatcher: Dispatcher
    poller: Poller
    pruner: Pruner  # deletes what is past RECEIVER_RETENTION, beside the loops
    submitter: Submitter
    admin_token_digest: str
    auth_failures: FailureLimiter
    trusted_proxies: tuple[Network, ...]
    quarantine: Quarantine  # where refused hook requests are kept, capped
    heartbeat: Heartbeat
    answers: AnswerLog  # our answers to stored requests, written after they were sent
    # The built-in adapters and the settings' generic (Standard Webhooks) ones, by name.
    providers: dict[str, Provider] = dataclasses.field(default_factory=lambda: dict(PROVIDERS))
    builtins: list[str] = dataclasses.field(default_factory=list)  # built-in handler names

    def wakers(self) -> dict[str, Callable[[], None]]:
        """What to wake when another process commits work (see `Store.listen`)."""
        return {"deliveries": self.dispatcher.wake, "polls": self.poller.wake}

    async def start_heartbeat(self) -> None:
        """Join the workers (before the loops start): stamp what we lease with our id, and
        take over the work of dead workers, a killed predecessor's included."""
        self.dispatcher.worker = self.poller.worker = self.heartbeat.id
        await self.heartbeat.start()

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: Store | None = None,
        handlers: Registry | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> Runtime:
        store = store or store_for(settings.database_url, timeout=settings.store_timeout)
        if handlers is None:
            # The default module is optional (a fresh directory has none); a named one is not.
            required = settings.handlers != DEFAULT_HANDLERS
            handlers = load_handlers(settings.handlers, required=required)
        client = client or lazy_client(follow_redirects=False)
        providers = {**PROVIDERS, **generic_providers(settings.generic)}
        handlers = handlers.layered()  # the built-ins belong to this runtime alone
        gateways = {
            name: ProviderGateway(adapter, settings.provider(name), client)
            for name, adapter in providers.items()
        }
        dispatcher = Dispatcher(
            store,
            handlers,
            max_attempts=settings.handler_max_attempts,
            timeout=settings.handler_timeout,
            concurrency=settings.handler_concurrency,
            retry_base=settings.retry_base_delay,
            retry_cap=settings.retry_max_delay,
        )
        ingest = Ingest(store, handlers, dispatcher.wake, runner=dispatcher)
        poller = Poller(
            store,
            ingest,
            gateways,
            interval=settings.poll_interval,
            max_interval=settings.poll_max_interval,
            deadline_for=settings.deadline_for,
            give_up_for=settings.give_up_for,
            limits={
                name: ProviderLimits(
                    name,
                    concurrency=settings.provider(name).poll_concurrency,
                    failure_threshold=settings.circuit_failures,
                    cooldown=settings.circuit_cooldown,
                )
                for name in providers
            },
        )
        # Registered after the poller is built: a download asks it for fresh links.
        builtins = install_builtins(
            handlers, settings, client=client, store=store, renew=poller.renew
        )
        if builtins:
            log.info("built-in handlers: %s", ", ".join(builtins))
        check_handlers(handlers, providers)  # one that can never run stops the start
        caps = {name: cap for name in providers if (cap := settings.provider(name).max_running)}
        submitter = Submitter(
            store,
            ingest,
            gateways,
            public_url=settings.public_url,
            poll_interval=settings.poll_interval,
            deadline_for=settings.deadline_for,
            give_up_for=settings.give_up_for,
            wake_poller=poller.wake,
            notify_secret=settings.forward.secret is not None,
            pricing=Pricing(settings.provider, settings.budget_daily, settings.budgets),
            max_running=caps,
            groups=settings.groups,
            limits=poller.limits,
        )
        poller.retry_create = submitter.retry_create
        if caps:
            slots = Slots(submitter.admit, caps, sweep=max(1.0, settings.poll_interval))
            poller.slots, ingest.on_end = slots, slots.job_ended
            submitter.wake_slots = slots.wake_for
        return cls(
            settings=settings,
            store=store,
            handlers=handlers,
            client=client,
            gateways=gateways,
            ingest=ingest,
            dispatcher=dispatcher,
            poller=poller,
            pruner=Pruner(store, settings.retention_seconds()),
            submitter=submitter,
            admin_token_digest=digest(ensure_admin_token(settings)),
            auth_failures=FailureLimiter(
                burst=settings.auth_failure_burst, rate=settings.auth_failure_rate
            ),
            trusted_proxies=parse_networks(settings.trusted_proxies),
            quarantine=Quarantine(store, max_rows=settings.quarantine_max_rows),
            heartbeat=Heartbeat(
                store,
                timeout=settings.worker_timeout,
                on_declared_dead=dispatcher.recheck_leases,
            ),
            answers=AnswerLog(store),
            providers=providers,
            builtins=builtins,
        )
