"""The receiver's one outgoing HTTP client, made when something first sends.

Importing httpx and building its TLS context take about a fifth of a second, which a
cold start taking callbacks does not need: polls, submissions and built-in handlers are
what send, and they come later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import httpx

__all__ = ["lazy_client"]


class _LazyClient:
    """Stands in for an `httpx.AsyncClient`, building the real one on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: httpx.AsyncClient | None = None

    def _real(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(**self._options)
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    async def aclose(self) -> None:
        if self._client is not None:  # never built: nothing to close
            await self._client.aclose()


def lazy_client(**options: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient(**options)` that is built when first used."""
    return cast("httpx.AsyncClient", _LazyClient(**options))
