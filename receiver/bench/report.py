"""The benchmark's report as text for people (the JSON form is the Report itself)."""

from __future__ import annotations

from receiver.bench.results import Backend, Figures, Report, Target

__all__ = ["render"]


def _row(name: str, figures: Figures | None) -> str:
    if figures is None:
        return f"  {name:<12} (not measured)"
    return (
        f"  {name:<12} {figures.requests_per_s:>9.0f}/s  p50 {figures.p50_ms:>7.2f} ms"
        f"  p99 {figures.p99_ms:>7.2f} ms  errors {figures.errors}"
    )


def _times(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _backend(backend: Backend) -> list[str]:
    lines = [
        f"{backend.database}: {'route':<52} {'rate':>9}  {'p50 ms':>7}  {'p99 ms':>7}"
        f"  {'errors':>6}  {'floor':>6}  {'static':>6}  {'bytes/cb':>8}"
    ]
    for run in backend.routes:
        f = run.figures
        size = "" if run.bytes_per_callback is None else f"{run.bytes_per_callback:.0f}"
        lines.append(
            f"  {run.route:<7} {run.request:<52} {f.requests_per_s:>7.0f}/s  {f.p50_ms:>7.2f}"
            f"  {f.p99_ms:>7.2f}  {f.errors:>6}  {_times(run.to_floor):>6}"
            f"  {_times(run.to_static):>6}  {size:>8}"
        )
    if backend.two_processes is not None:
        two = backend.two_processes
        static = next((run for run in backend.routes if run.route == "static"), None)
        one = f" (one process {static.figures.requests_per_s:.0f}/s)" if static else ""
        lines.append(
            f"  two receiver processes, static route: {two.requests_per_s:.0f}/s, p50"
            f" {two.p50_ms:.2f} ms, p99 {two.p99_ms:.2f} ms{one}"
        )
    return lines


def _target(target: Target) -> str:
    verdict = {True: "pass", False: "FAIL", None: "n/a "}[target.ok]
    value = "not measured" if target.value is None else f"{target.value:g}"
    return f"  [{verdict}] {target.name} {target.want}: {value}"


def render(report: Report) -> str:
    """Aligned lines: the floors, every route on each database, the receiver's own figures,
    the targets, and last the store check's verdict."""
    machine = report.machine
    options = report.options
    lines = [
        f"machine: {machine['nproc']} CPUs, {machine['cpu']}, Python {machine['python']},"
        f" load average {machine['load_average']}",
        f"load: {report.generator}, {options.concurrency} connections, {options.duration:g}s each",
        "throughput and acknowledgement latency:",
        _row("floor before", report.floor),
        _row("floor after", report.floor_after),
        _row("webhook", report.webhook),
    ]
    for backend in report.backends:
        lines += _backend(backend)
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
    for backend in report.backends:
        if backend.bytes_per_callback is not None:
            lines.append(
                f"database, {backend.database}: {backend.bytes_per_callback:.0f} bytes per"
                " stored callback (static route)"
            )
    if report.soak is not None:
        s = report.soak
        lines.append(
            f"soak: {s.callbacks} callbacks in {s.seconds:.0f}s, RSS {s.rss_first_mb:.1f} ->"
            f" {s.rss_last_mb:.1f} MB (max {s.rss_max_mb:.1f}, growth {s.growth:+.1%})"
        )
    lines.append("targets (reported, not enforced; only a missing callback fails the run):")
    lines += [_target(target) for target in report.targets]
    check = report.check
    if check.checked:
        verdict = "OK" if check.ok else f"{check.missing} MISSING"
        lines.append(
            f"store check: {check.acknowledged} acknowledged, {check.stored} stored: {verdict}"
        )
    else:
        lines.append("store check: skipped (pass --database-url with --url to check)")
    return "\n".join(lines)
