"""receiver: takes providers' callbacks for asynchronous generation jobs and fires your handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.lazy import lazy_exports

if TYPE_CHECKING:
    from receiver.app import create_app
    from receiver.config import Settings, load_settings
    from receiver.dispatch import DeliveryInfo, Registry, on
    from receiver.errors import (
        ConfigError,
        ProviderError,
        ReceiverError,
        Retry,
        StoreUnavailable,
        UnknownProvider,
        UnparseablePayload,
    )
    from receiver.models import Delivery, DeliveryState, Disposition, Event, Job, Status
    from receiver.store import SQLiteStore, Store

# Where each public name lives. They are imported on first use, so that `python -m receiver`
# and a serverless cold start load only what their path needs (the web framework is heavy).
_HOMES = {
    "create_app": "receiver.app",
    "Settings": "receiver.config",
    "load_settings": "receiver.config",
    "DeliveryInfo": "receiver.dispatch",
    "Registry": "receiver.dispatch",
    "on": "receiver.dispatch",
    "ConfigError": "receiver.errors",
    "ProviderError": "receiver.errors",
    "ReceiverError": "receiver.errors",
    "Retry": "receiver.errors",
    "StoreUnavailable": "receiver.errors",
    "UnknownProvider": "receiver.errors",
    "UnparseablePayload": "receiver.errors",
    "Delivery": "receiver.models",
    "DeliveryState": "receiver.models",
    "Disposition": "receiver.models",
    "Event": "receiver.models",
    "Job": "receiver.models",
    "Status": "receiver.models",
    "SQLiteStore": "receiver.store",
    "Store": "receiver.store",
}


__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "ConfigError",
    "Delivery",
    "DeliveryInfo",
    "DeliveryState",
    "Disposition",
    "Event",
    "Job",
    "ProviderError",
    "ReceiverError",
    "Registry",
    "Retry",
    "SQLiteStore",
    "Settings",
    "Status",
    "Store",
    "StoreUnavailable",
    "UnknownProvider",
    "UnparseablePayload",
    "create_app",
    "load_settings",
    "on",
]
