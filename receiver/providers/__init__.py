"""Provider adapters, one module each, and the registry that names them."""

from __future__ import annotations

from receiver.errors import UnknownProvider
from receiver.providers.aivideoapi import Aivideoapi
from receiver.providers.apiframe import Apiframe
from receiver.providers.artvisum import Artvisum
from receiver.providers.base import (
    CallbackStyle,
    Created,
    Provider,
    ProviderGateway,
    ProviderRequest,
    ProviderSettings,
    valid_task_id,
)
from receiver.providers.generic import GenericProvider, GenericSettings, generic_providers
from receiver.providers.rixapi import Rixapi
from receiver.providers.runway_ai import RunwayAi

__all__ = [
    "PROVIDERS",
    "CallbackStyle",
    "Created",
    "GenericProvider",
    "GenericSettings",
    "Provider",
    "ProviderGateway",
    "ProviderRequest",
    "ProviderSettings",
    "generic_providers",
    "get_provider",
    "valid_task_id",
]

PROVIDERS: dict[str, Provider] = {
    adapter.name: adapter
    for adapter in (Apiframe(), Rixapi(), Aivideoapi(), Artvisum(), RunwayAi())
}


def get_provider(name: str) -> Provider:
    """The adapter for `name`; UnknownProvider if there is none."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownProvider(name) from None
