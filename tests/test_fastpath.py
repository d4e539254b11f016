"""Which requests the raw-ASGI fast path takes; everything else goes to the Litestar routes.

What it answers is tested through HTTP with the hook tests (tests/test_hooks.py and the
fault tests): every rejection there is the ordinary route's, reached through the fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from receiver.config import load_settings
from receiver.dispatch import Registry
from receiver.fastpath import FastHooks
from receiver.runtime import Runtime


def fast_hooks(tmp_path: Path, **env: str) -> FastHooks:
    settings = load_settings(
        {
            "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.db'}",
            "RECEIVER_ADMIN_TOKEN": "a" * 32,
            **env,
        }
    )
    return FastHooks(Runtime.build(settings, handlers=Registry()))


def scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


class TestRoutes:
    @pytest.mark.parametrize(
        ("path", "taken"),
        [
            ("/hooks/apiframe", "static"),
            ("/hooks/apiframe/tok-123", "token"),
            ("/hooks/apiframe/", None),  # no token: the ordinary route's 404
            ("/hooks/apiframe/tok/extra", None),
            ("/hooks/rixapi/tok-123", None),  # unauthenticated posts: confirmed by pull there
            ("/hooks/aivideoapi/tok-123", None),  # nudges
            ("/hooks/nosuch/tok-123", None),
            ("/jobs", None),
        ],
    )
    def test_secret_header_providers_only(self, tmp_path: Path, path: str, taken: str) -> None:
        """Static and per-job URLs of a provider that sends a secret header, and nothing else."""
        fast = fast_hooks(tmp_path, RECEIVER_APIFRAME_WEBHOOK_SECRET="s" * 16)
        route = fast.route(scope(path))
        found = None if route is None else ("token" if route.by_token else "static")
        assert taken == found

    def test_without_a_static_secret_only_jobs_own_urls(self, tmp_path: Path) -> None:
        """No static secret configured: the static route is the ordinary one (it answers 401)."""
        fast = fast_hooks(tmp_path)
        assert fast.route(scope("/hooks/apiframe")) is None
        route = fast.route(scope("/hooks/apiframe/tok-123"))
        assert route is not None and route.by_token and route.secret_digest is None

    def test_only_posts(self, tmp_path: Path) -> None:
        """A nudge (GET) and a lifespan message are not for the fast path."""
        fast = fast_hooks(tmp_path, RECEIVER_APIFRAME_WEBHOOK_SECRET="s" * 16)
        assert fast.route(scope("/hooks/apiframe/tok-123", "GET")) is None
        assert fast.route({"type": "lifespan"}) is None
