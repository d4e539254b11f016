"""Contract tests for dashboard sessions in the Store: every backend runs them."""

from __future__ import annotations

from collections.abc import Callable

from receiver.store import Store

T0 = 1_000_000.0


class TestSessions:
    """A session lives from its creation until it is deleted or expires, for every process."""

    async def test_alive_until_it_expires(self, store: Store) -> None:
        """A session is alive strictly before `expires_at`, and not after."""
        await store.create_session("k1", at=T0, expires_at=T0 + 60)
        assert (True, True, False) == (
            await store.session_alive("k1", at=T0),
            await store.session_alive("k1", at=T0 + 59.9),
            await store.session_alive("k1", at=T0 + 60),
        )

    async def test_unknown_key_is_not_alive(self, store: Store) -> None:
        """Only a key that was stored is alive."""
        await store.create_session("k1", at=T0, expires_at=T0 + 60)
        assert not await store.session_alive("k2", at=T0)

    async def test_delete_ends_only_that_session(self, store: Store) -> None:
        """Logout deletes one session; the others stay; deleting twice is harmless."""
        await store.create_session("k1", at=T0, expires_at=T0 + 60)
        await store.create_session("k2", at=T0, expires_at=T0 + 60)
        await store.delete_session("k1")
        await store.delete_session("k1")
        assert (False, True) == (
            await store.session_alive("k1", at=T0),
            await store.session_alive("k2", at=T0),
        )

    async def test_expired_sessions_are_removed_by_the_next_login(self, store: Store) -> None:
        """Rows do not pile up: creating a session deletes those already expired."""
        await store.create_session("old", at=T0, expires_at=T0 + 10)
        await store.create_session("new", at=T0 + 20, expires_at=T0 + 80)
        # Asked about a moment when it was still valid: the row itself is gone.
        assert not await store.session_alive("old", at=T0 + 5)
        assert await store.session_alive("new", at=T0 + 20)

    async def test_another_process_sees_and_ends_it(
        self, store: Store, make_store: Callable[[], Store]
    ) -> None:
        """A second store on the same database shares the sessions, logout included."""
        other = make_store()
        await other.open()
        try:
            await store.create_session("k1", at=T0, expires_at=T0 + 60)
            assert await other.session_alive("k1", at=T0)
            await other.delete_session("k1")
            assert not await store.session_alive("k1", at=T0)
        finally:
            await other.close()
