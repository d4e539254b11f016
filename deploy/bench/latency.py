"""Delivery latency across processes: callbacks one at a time to a receiver, handler
starts read from the worker's log (see bench_handlers.py and run.sh)."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx


async def main(url: str, count: int, log: Path, secret: str) -> None:
    acked: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for n in range(count):
            task = f"latency-{int(time.time())}-{n}"
            body = {"task_id": task, "task_type": "runway", "status": "finished", "percentage": 100}
            answer = await client.post(
                "/hooks/apiframe", json=body, headers={"x-webhook-secret": secret}
            )
            answer.raise_for_status()
            acked[task] = time.time()
            await asyncio.sleep(0.05)  # an idle worker each time: the wake-up is measured
    await asyncio.sleep(2)
    from_commit, from_ack = [], []
    for line in log.read_text().splitlines():
        task, started, received = line.split()
        if task in acked:
            from_commit.append((float(started) - float(received)) * 1000)
            from_ack.append((float(started) - acked[task]) * 1000)
    for name, values in (
        ("commit start -> handler start", from_commit),
        ("client got 200 -> handler start", from_ack),
    ):
        values.sort()
        print(
            f"{name}: n={len(values)} p50={statistics.median(values):.1f} ms"
            f" p95={values[int(0.95 * (len(values) - 1))]:.1f} ms max={values[-1]:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(
        main(sys.argv[1], int(sys.argv[2]), Path(os.environ["BENCH_LOG"]), os.environ["SECRET"])
    )
