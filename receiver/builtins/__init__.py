"""Built-in handlers, switched on from settings: forward, download, notify and command.

They live in the installed package (not in the example `handlers/` folder) so every
install has them, and they are registered into the runtime's registry at start when
configured, whatever `RECEIVER_HANDLERS` names. Each is a handler like any other: its
own delivery per event, with retries, backoff and a dead state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.builtins.command import COMMAND_HANDLER, install_command
from receiver.builtins.download import DOWNLOAD_HANDLER, Renew, install_download
from receiver.builtins.forward import NOTIFY_URL_HANDLER, forward_name, install_forward
from receiver.builtins.notify import NOTIFY_HANDLER, install_notify
from receiver.dispatch import Registry
from receiver.egress import Egress
from receiver.ratelimit import parse_networks
from receiver.store.base import Store

if TYPE_CHECKING:
    import httpx

    from receiver.config import Settings

__all__ = [
    "COMMAND_HANDLER",
    "DOWNLOAD_HANDLER",
    "NOTIFY_HANDLER",
    "NOTIFY_URL_HANDLER",
    "forward_name",
    "install_builtins",
]


def install_builtins(
    registry: Registry,
    settings: Settings,
    *,
    client: httpx.AsyncClient,
    store: Store,
    renew: Renew | None = None,
) -> list[str]:
    """Register every configured built-in into `registry`; return their handler names.

    `download` fetches URLs a provider chose, so it goes through an `Egress` instead of
    `client`: public addresses only, and the networks RECEIVER_FETCH_ALLOW_NETWORKS lists.
    `renew` (the poller's) asks a provider for fresh links when one has expired.
    """
    allowed = parse_networks(settings.fetch_allow_networks, "RECEIVER_FETCH_ALLOW_NETWORKS")
    return [
        *install_forward(registry, settings.forward, client),
        *install_download(registry, settings.download, Egress(allowed), store, renew),
        *install_notify(registry, settings.notify, client),
        *install_command(registry, settings.command),
    ]
