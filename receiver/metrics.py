"""Prometheus metrics at `/metrics`: plain in-process counters on the hot path, and gauges
read from the store only when scraped.

Counting a callback is a dict lookup and an addition; nothing is locked or allocated
beyond the first time a label set is seen. Label values that come from outside (a
provider name in a URL) are mapped onto a fixed set first, so callers cannot make the
series grow without bound.

Every family has its own name: the gauge of deliveries by state is
`receiver_deliveries_by_state`, apart from the counter `receiver_deliveries_total`
(family `receiver_deliveries`), so OpenMetrics readers and prometheus_client's registry
accept the page. Counters count what this process did, but for `receiver_replays_total`,
which the store keeps (a replay adds to it in its own transaction), so it counts every
process's replays and a `receiver replay` run on the database; the gauges read from the
store (deliveries, jobs) see every process's work too.

The `/metrics` route itself is in receiver.scrape.
"""

from __future__ import annotations

import bisect
import math
import platform
from collections.abc import Container, Iterable, Mapping, Sequence
from importlib import metadata

from receiver.models import now
from receiver.process_metrics import process_lines
from receiver.providers import PROVIDERS

__all__ = [
    "METRICS",
    "Counter",
    "Histogram",
    "Metrics",
    "build_version",
    "provider_label",
]


def provider_label(name: str, configured: Container[str] = ()) -> str:
    """A provider name fit for a label: a built-in or configured provider, else "unknown"."""
    return name if name in PROVIDERS or name in configured else "unknown"


def build_version() -> str:
    """The installed package's version, or "unknown" when run from a bare source tree."""
    try:
        return metadata.version("receiver")
    except metadata.PackageNotFoundError:
        return "unknown"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonic count per label set."""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *values: str, amount: float = 1.0) -> None:
        self.values[values] = self.values.get(values, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for values, count in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labels, values)} {_number(count)}"


class Histogram:
    """Observations counted into fixed buckets per label set, with their sum."""

    def __init__(
        self, name: str, help: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: a count per bucket (not cumulative), then the +Inf overflow; the sum.
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, *values: str) -> None:
        counts = self.counts.get(values)
        if counts is None:
            counts = self.counts[values] = [0] * (len(self.buckets) + 1)
            self.sums[values] = 0.0
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[values] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for values, counts in sorted(self.counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.labels, values, le)} {running}"
            yield f"{self.name}_sum{_labels(self.labels, values)} {_number(self.sums[values])}"
            yield f"{self.name}_count{_labels(self.labels, values)} {running}"


class Metrics:
    """Every counter the receiver keeps; one per process (`METRICS`), as Prometheus expects."""

    def __init__(self) -> None:
        self.callbacks = Counter(
            "receiver_callbacks_total",
            "Requests to the hook routes, by provider and outcome (the event's disposition,"
            " the rejection reason, or unavailable).",
            ("provider", "outcome"),
        )
        self.ack_seconds = Histogram(
            "receiver_callback_ack_seconds",
            "Time from a hook request's arrival to its answer (after the durable write).",
            ("provider",),
            (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.deliveries = Counter(
            "receiver_deliveries_total",
            "Handler runs, by handler and outcome (done, retry, dead).",
            ("handler", "outcome"),
        )
        self.polls = Counter(
            "receiver_polls_total",
            "Status pulls from providers, by provider and outcome (ok, error).",
            ("provider", "outcome"),
        )
        self.handler_seconds = Histogram(
            "receiver_handler_duration_seconds",
            "Time a handler ran, by handler and outcome (done, retry, dead).",
            ("handler", "outcome"),
            (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        )
        self.build = (build_version(), platform.python_version())

    def callback(self, label: str, outcome: str, seconds: float) -> None:
        """Count one hook request; `label` is already bounded (see `provider_label`)."""
        self.callbacks.inc(label, outcome)
        self.ack_seconds.observe(seconds, label)

    def delivery(self, handler: str, outcome: str, seconds: float | None = None) -> None:
        """Count one handler run; `seconds`, when it ran at all, goes to the duration histogram."""
        self.deliveries.inc(handler, outcome)
        if seconds is not None:
            self.handler_seconds.observe(seconds, handler, outcome)

    def poll(self, provider: str, outcome: str) -> None:
        self.polls.inc(provider_label(provider), outcome)

    def render(
        self,
        counts: Mapping[str, int],
        oldest_pending_at: float | None,
        jobs: Mapping[str, int] | None = None,
        spend: Mapping[str, float] | None = None,
        replays: int | None = None,
    ) -> str:
        """The exposition text: counters, the gauges read from the store, build and process."""
        lines: list[str] = []
        for metric in (
            self.callbacks,
            self.ack_seconds,
            self.deliveries,
            self.handler_seconds,
            self.polls,
        ):
            lines += metric.render()
        if replays is not None:
            lines += [
                "# HELP receiver_replays_total Deliveries put back to pending by a replay, by"
                " any process or by `receiver replay` on the database (kept by the store).",
                "# TYPE receiver_replays_total counter",
                f"receiver_replays_total {replays}",
            ]
        lines += [
            "# HELP receiver_deliveries_by_state Deliveries in the store, by state.",
            "# TYPE receiver_deliveries_by_state gauge",
        ]
        lines += [
            f'receiver_deliveries_by_state{{state="{_escape(s)}"}} {n}'
            for s, n in sorted(counts.items())
        ]
        lines += [
            "# HELP receiver_oldest_pending_delivery_age_seconds Age of the oldest pending"
            " delivery; 0 when none is pending.",
            "# TYPE receiver_oldest_pending_delivery_age_seconds gauge",
            "receiver_oldest_pending_delivery_age_seconds "
            + _number(0.0 if oldest_pending_at is None else max(0.0, now() - oldest_pending_at)),
        ]
        if jobs is not None:
            lines += [
                "# HELP receiver_jobs Jobs in the store, by status.",
                "# TYPE receiver_jobs gauge",
            ]
            lines += [
                f'receiver_jobs{{status="{_escape(s)}"}} {n}' for s, n in sorted(jobs.items())
            ]
        if spend is not None:
            # A gauge, though named _total: it is read from the store, and retention's
            # deletes take ended jobs (and their cost) out of it.
            lines += [
                "# HELP receiver_spend_total Cost of the jobs in the store, by provider: the"
                " final cost of ended jobs, the estimate of open ones.",
                "# TYPE receiver_spend_total gauge",
            ]
            lines += [
                f'receiver_spend_total{{provider="{_escape(p)}"}} {_number(v)}'
                for p, v in sorted(spend.items())
            ]
        version, python = self.build
        lines += [
            "# HELP receiver_build_info The receiver's version and Python's; always 1.",
            "# TYPE receiver_build_info gauge",
            f'receiver_build_info{{version="{_escape(version)}",python="{_escape(python)}"}} 1',
        ]
        lines += process_lines()
        return "\n".join(lines) + "\n"


METRICS = Metrics()
