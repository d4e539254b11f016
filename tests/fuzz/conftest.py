"""Fuzz settings, and a terminal summary of how many cases each fuzz target tried."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from tally import ANSWERS, CASES, SECONDS

# Cases are counted by the tests themselves; these settings keep hypothesis from stopping
# a long run for reasons that are not failures (slow generation of huge bodies, a
# fixture shared by every case on purpose: the store accumulates like a real one).
settings.register_profile(
    "fuzz",
    deadline=None,  # the bound per case is enforced by the tests, with a clear message
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    terminalreporter.section("fuzz cases tried")
    for target in sorted(CASES):
        terminalreporter.write_line(
            f"{target:<45} {CASES[target]:>7} cases {SECONDS[target]:>8.1f} s"
        )
    terminalreporter.write_line(f"{'total':<45} {sum(CASES.values()):>7} cases")
    for target in sorted(ANSWERS):
        spread = " ".join(f"{code}:{n}" for code, n in sorted(ANSWERS[target].items()))
        terminalreporter.write_line(f"{target:<45} answers {spread}")
