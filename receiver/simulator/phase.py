"""The phases a simulated job goes through (apart, so the CLI can name them cheaply)."""

from __future__ import annotations

import enum

__all__ = ["Phase"]


class Phase(enum.StrEnum):
    """Where a simulated job is; each provider renders it in its own words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
