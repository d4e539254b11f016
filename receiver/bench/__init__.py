"""`receiver bench`: a benchmark anyone can rerun, with the stack's floor beside the receiver."""

from __future__ import annotations

from receiver.bench.report import render
from receiver.bench.runner import Figures, Options, Report, run_bench

__all__ = ["Figures", "Options", "Report", "render", "run_bench"]
