"""The operator dashboard at `/ui`: server-rendered pages, live updates by server-sent events."""

from __future__ import annotations

from receiver.ui.routes import UI_ROUTER

__all__ = ["UI_ROUTER"]
