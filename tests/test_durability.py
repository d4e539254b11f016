"""The acknowledgement contract: a 2xx survives a SIGKILL of the receiver at any moment."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from live_process import free_port, stored_callbacks
from procs import HANDLER_MODULE, send_until_refused, start_receiver, wait_healthy


class TestKillNine:
    """SIGKILL while callbacks are in flight loses no acknowledged callback."""

    async def test_every_acknowledged_callback_is_stored_and_handled_after_restart(
        self, tmp_path: Path, backend: str, store_url: str
    ) -> None:
        """Kill -9 under load, restart, and find every 2xx'd callback stored and its handler
        run, on each backend (on PostgreSQL, callbacks are committed in batches)."""
        (tmp_path / "kill_handlers.py").write_text(HANDLER_MODULE)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {"RECEIVER_DATABASE_URL": store_url}
        # Where the rows are read back from: the file itself, or the server.
        database: Path | str = tmp_path / "receiver.db" if backend == "sqlite" else store_url
        first = start_receiver(tmp_path, port, env)
        acknowledged: set[str] = set()
        sent: list[str] = []
        try:
            await wait_healthy(url, first)
            senders = [
                asyncio.create_task(send_until_refused(url, acknowledged, sent, worker))
                for worker in range(16)
            ]
            while len(acknowledged) < 300:
                await asyncio.sleep(0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            await asyncio.wait_for(asyncio.gather(*senders), timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
        assert len(sent) > len(acknowledged), "the kill should interrupt requests in flight"

        second = start_receiver(tmp_path, port, env)
        try:
            await wait_healthy(url, second)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                state = stored_callbacks(database)
                if all(state.get(task, ("", ""))[1] == "done" for task in acknowledged):
                    break
                await asyncio.sleep(0.2)
        finally:
            second.terminate()
            second.wait(timeout=30)

        state = stored_callbacks(database)
        missing = sorted(acknowledged - state.keys())
        assert [] == missing
        not_done = sorted(t for t in acknowledged if state[t][1] != "done")
        assert [] == not_done
        handled = (tmp_path / "handled.log").read_text().split("\n")
        handled_events = {line.split(" ")[0] for line in handled if line}
        assert set() == {state[t][0] for t in acknowledged} - handled_events
        print(
            f"\nkill -9: sent {len(sent)}, acknowledged {len(acknowledged)}, "
            f"stored {len(state)}, lost 0"
        )
