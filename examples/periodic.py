"""Periodic jobs: a worker that also enqueues a cleanup every night at 03:00 UTC, and a
report every second (to see it work).

    python examples/periodic.py

Every worker may carry the same list: each tick is enqueued once however many run it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from s3queue import Cron, JobContext, Queue, Worker


async def main() -> None:
    q = await Queue.open("file://.s3queue-example", "maintenance")
    ran = asyncio.Event()

    async def handle(payload: Any, ctx: JobContext) -> None:
        print(f"{ctx.message_id}: {payload}")
        ran.set()

    nightly = Cron("0 3 * * *", payload={"task": "cleanup"}, name="cleanup")
    every_second = Cron("* * * * * *", payload={"task": "report"}, name="report")
    worker = Worker(q, handle, cron=[nightly, every_second])  # the same list on every worker
    print(f"next cleanup at {nightly.next_tick(q.clock()):.0f} (unix time, UTC)")
    task = asyncio.create_task(worker.run())
    await ran.wait()  # the first report ran
    await worker.stop()
    await task
    await q.close()


if __name__ == "__main__":
    asyncio.run(main())
