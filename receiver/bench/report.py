"""The benchmark's report as text for people (the JSON form is the Report itself)."""

from __future__ import annotations

from receiver.bench.runner import Figures, Report

__all__ = ["render"]


def _row(name: str, figures: Figures | None) -> str:
    if figures is None:
        return f"  {name:<10} (not measured)"
    return (
        f"  {name:<10} {figures.requests_per_s:>9.0f}/s  p50 {figures.p50_ms:>7.2f} ms"
        f"  p99 {figures.p99_ms:>7.2f} ms  errors {figures.errors}"
    )


def render(report: Report) -> str:
    """A few aligned lines: throughput and latency side by side, then the receiver's own figures."""
    machine = report.machine
    options = report.options
    lines = [
        f"machine: {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']},"
        f" load average {machine['load_average']}",
        f"load: {report.generator}, {options.concurrency} connections, {options.duration:g}s each",
        "throughput and acknowledgement latency:",
        _row("floor", report.floor),
        _row("webhook", report.webhook),
        _row("receiver", report.receiver),
    ]
    for name, ratio in report.ratios.items():
        lines.append(f"  {name.replace('_', ' ')}: {ratio:.2f}")
    if report.delivery is not None:
        d = report.delivery
        lines.append(
            f"delivery (ack to handler start) at {d.rate_per_s:.0f}/s: p50 {d.p50_ms:.2f} ms,"
            f" p99 {d.p99_ms:.2f} ms ({d.handled}/{d.acknowledged} handled;"
            f" ack p50 {d.ack_p50_ms:.2f} ms, p99 {d.ack_p99_ms:.2f} ms)"
        )
    if report.backlog_drain_s is not None:
        lines.append(f"handlers caught up {report.backlog_drain_s:.2f}s after the peak load")
    if report.start_to_callback_ms is not None:
        lines.append(
            f"start to first callback: {report.start_to_callback_ms:.0f} ms"
            " (process spawn to a callback's 200, committed)"
        )
    if report.start_to_ready_ms is not None:
        lines.append(
            f"start to ready: {report.start_to_ready_ms:.0f} ms"
            " (process spawn to /healthz 200, every route loaded)"
        )
    if report.rss_mb is not None:
        lines.append(f"memory: {report.rss_mb:.1f} MB RSS at peak")
    if report.db_bytes_per_callback is not None:
        lines.append(f"database: {report.db_bytes_per_callback:.0f} bytes per stored callback")
    if report.soak is not None:
        s = report.soak
        lines.append(
            f"soak: {s.callbacks} callbacks in {s.seconds:.0f}s, RSS {s.rss_first_mb:.1f} ->"
            f" {s.rss_last_mb:.1f} MB (max {s.rss_max_mb:.1f}, growth {s.growth:+.1%})"
        )
    check = report.check
    if check.checked:
        verdict = "OK" if check.ok else f"{check.missing} MISSING"
        lines.append(
            f"store check: {check.acknowledged} acknowledged, {check.stored} stored: {verdict}"
        )
    else:
        lines.append("store check: skipped (pass --database-url with --url to check)")
    return "\n".join(lines)
