"""receiver: takes providers' callbacks for asynchronous generation jobs and fires your handlers."""

from __future__ import annotations

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
