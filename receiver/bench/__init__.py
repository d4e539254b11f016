"""`receiver bench`: a benchmark anyone can rerun, with the stack's floor beside the receiver."""

from __future__ import annotations

from typing import TYPE_CHECKING

from receiver.lazy import lazy_exports

if TYPE_CHECKING:
    from receiver.bench.report import render
    from receiver.bench.runner import Figures, Options, Report, run_bench

# Imported on first use: `receiver.bench.handler` is loaded by the receiver it measures.
__getattr__ = lazy_exports(
    __name__,
    {
        "render": "receiver.bench.report",
        "Figures": "receiver.bench.runner",
        "Options": "receiver.bench.runner",
        "Report": "receiver.bench.runner",
        "run_bench": "receiver.bench.runner",
    },
)

__all__ = ["Figures", "Options", "Report", "render", "run_bench"]
