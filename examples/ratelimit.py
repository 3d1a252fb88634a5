"""Rate limits: a queue limited to 10 jobs a second, and one kind of job to 2.

    python examples/ratelimit.py

Enqueues 30 jobs, 6 of them SMS (``rate_key="sms"``), on a local-directory queue of
2 shards, runs a worker with the two limits, and prints when each job started. Every worker
process of a queue sets the same limits; they hold across all of them.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from s3queue import JobContext, Queue, Worker


async def main() -> None:
    with tempfile.TemporaryDirectory() as store:
        q = await Queue.open(f"file://{store}", "notify", shards=2)
        for n in range(30):  # one at a time: the shards in turn, so both hold SMS
            if n % 5:
                await q.enqueue({"email": n})
            else:
                await q.enqueue({"sms": n}, rate_key="sms")
        q.set_rate_limit("10/s")  # every job of the queue
        q.set_rate_limit("2/s", key="sms")  # and those enqueued with rate_key="sms"

        began = time.monotonic()
        done = asyncio.Event()
        started = 0

        async def send(payload: dict[str, int], ctx: JobContext) -> None:
            nonlocal started
            started += 1
            print(f"{time.monotonic() - began:5.2f} s  {payload}")
            if started == 30:
                done.set()

        worker = Worker(q, send, concurrency=8)
        task = asyncio.create_task(worker.run())
        await done.wait()
        await worker.stop()
        await task
        print(f"30 jobs in {time.monotonic() - began:.1f} s: 10 a second, of them 2 SMS")
        await q.close()


if __name__ == "__main__":
    asyncio.run(main())
