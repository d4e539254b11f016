"""Spend: a job's estimated cost from its provider's configured price, and the budgets
a submission must fit in.

A provider's price is `price_per_job` plus `price_per_second` times the video's length,
read from the input's duration field where the provider has one (else its longest
documented length, so an estimate errs high). Budgets are per UTC day: one for all
spend (RECEIVER_BUDGET_DAILY) and one per metadata value (RECEIVER_BUDGETS). A job
counts its final cost once it ended and its estimate until then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from receiver.errors import ConfigError, ReceiverError
from receiver.providers import ProviderSettings

__all__ = [
    "DAY",
    "DURATIONS",
    "Budget",
    "BudgetExceeded",
    "Pricing",
    "Spend",
    "budgets_for",
    "check_budgets",
    "check_limits",
    "day_start",
    "estimate",
    "parse_budgets",
    "spend_row",
]

DAY = 86400.0

# provider -> (the input field holding the video's seconds, its path inside the field, the
# seconds assumed without it: the longest the provider documents). None: no such field,
# only price_per_job applies.
DURATIONS: dict[str, tuple[str, str | None, float] | None] = {
    "apiframe": ("duration", None, 10.0),  # 5 or 10
    "rixapi": ("options", "seconds", 10.0),  # options.seconds; examples use 10
    "aivideoapi": ("time", None, 10.0),  # "up to 10 seconds"
    "runway_ai": ("duration", None, 0.0),  # required where the endpoint makes a video
    "artvisum": None,
}


class BudgetExceeded(ReceiverError):
    """A submission would take a budget past its limit; nothing was created."""

    def __init__(self, budget: Budget, spent: float, cost: float):
        self.budget, self.spent, self.cost = budget, spent, cost
        super().__init__(
            f"budget {budget.name} ({_money(budget.limit)} per UTC day) has"
            f" {_money(max(0.0, budget.limit - spent))} left; this job is estimated at"
            f" {_money(cost)}"
        )


class Budget(msgspec.Struct, frozen=True):
    """A limit on one UTC day's spend: of every job (`key` None), or of the jobs whose
    metadata `key` is `value`."""

    name: str
    limit: float
    key: str | None = None
    value: str | None = None


def _money(amount: float) -> str:
    return f"{amount:.2f}".rstrip("0").rstrip(".") if amount else "0"


def day_start(at: float) -> float:
    """The start of the UTC day `at` falls in."""
    return math.floor(at / DAY) * DAY


def _seconds(provider: str, fields: Mapping[str, Any]) -> float:
    where = DURATIONS.get(provider)
    if where is None:
        return 0.0
    field, inner, default = where
    found: Any = fields.get(field)
    if inner is not None:
        found = found.get(inner) if isinstance(found, Mapping) else None
    try:
        seconds = float(found)
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) and seconds >= 0 else default


def estimate(provider: str, price: ProviderSettings, fields: Mapping[str, Any]) -> float | None:
    """The job's expected cost at `provider`; None when no price is configured for it."""
    if price.price_per_job is None and price.price_per_second is None:
        return None
    per_second = price.price_per_second or 0.0
    return (price.price_per_job or 0.0) + per_second * _seconds(provider, fields)


def budgets_for(
    daily: float | None, by_metadata: Mapping[str, Mapping[str, float]], metadata: Mapping[str, Any]
) -> list[Budget]:
    """The budgets a job with `metadata` counts against, in a fixed order (locks follow it)."""
    found = [Budget("daily", daily)] if daily is not None else []
    for key in sorted(by_metadata):
        value = metadata.get(key)
        if isinstance(value, str) and value in by_metadata[key]:
            found.append(Budget(f"{key}={value}", by_metadata[key][value], key, value))
    return found


def check_budgets(budgets: list[Budget], spent: list[float], cost: float) -> None:
    """BudgetExceeded for the first budget that `cost` on top of what it `spent` would pass."""
    for budget, already in zip(budgets, spent, strict=True):
        if already + cost > budget.limit + 1e-9:
            raise BudgetExceeded(budget, already, cost)


class Pricing:
    """The prices and budgets submissions are held to (from Settings)."""

    def __init__(
        self,
        prices: Callable[[str], ProviderSettings],
        daily: float | None = None,
        by_metadata: Mapping[str, Mapping[str, float]] | None = None,
    ):
        self.prices = prices
        self.daily = daily
        self.by_metadata = by_metadata or {}

    def estimate(self, provider: str, fields: Mapping[str, Any]) -> float | None:
        return estimate(provider, self.prices(provider), fields)

    def budgets(self, metadata: Mapping[str, Any]) -> tuple[Budget, ...]:
        return tuple(budgets_for(self.daily, self.by_metadata, metadata))


def parse_budgets(text: str) -> dict[str, dict[str, float]]:
    """RECEIVER_BUDGETS: `key=value:limit` pairs, comma-separated (customer=acme:50)."""
    found: dict[str, dict[str, float]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, rest = item.partition("=")
        value, colon, limit = rest.rpartition(":")
        if not (sep and colon and key and value):
            raise ConfigError(
                f"RECEIVER_BUDGETS: each entry must look like key=value:limit, got {item[:40]!r}"
            )
        try:
            found.setdefault(key.strip(), {})[value.strip()] = float(limit)
        except ValueError:
            raise ConfigError(f"RECEIVER_BUDGETS: {limit[:20]!r} is not a number") from None
    return found


def check_limits(daily: float | None, by_metadata: Mapping[str, Mapping[str, float]]) -> None:
    """ConfigError unless every budget is a finite number, 0 or more."""
    limits = [("RECEIVER_BUDGET_DAILY", daily)] + [
        (f"RECEIVER_BUDGETS ({key}={value})", limit)
        for key, values in by_metadata.items()
        for value, limit in values.items()
    ]
    for name, limit in limits:
        if limit is not None and not 0 <= limit < math.inf:
            raise ConfigError(f"{name} must be a number, 0 or more")


class Spend(msgspec.Struct, kw_only=True):
    """Spend of one provider on one UTC day (and one value of a metadata key, when asked).

    `cost` counts each job's final cost once it ended and its estimate until then;
    `estimated` the estimates alone. Jobs of an unpriced provider count 0.
    """

    provider: str
    day: str  # YYYY-MM-DD, UTC
    value: str | None = None
    jobs: int
    estimated: float
    cost: float


def spend_row(row: Any) -> Spend:
    """A Spend from a store's (provider, day number, value, jobs, estimated, cost) row."""
    provider, day, value, jobs, estimated, cost = row
    stamp = time.strftime("%Y-%m-%d", time.gmtime(int(day) * DAY))
    return Spend(
        provider=provider,
        day=stamp,
        value=None if value is None else str(value),
        jobs=int(jobs),
        estimated=float(estimated or 0.0),
        cost=float(cost or 0.0),
    )
