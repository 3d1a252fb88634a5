"""A producer and a worker pool on the embedded default (a local directory).

    python examples/quickstart.py

Enqueues a few e-mails (one with a dedup key, one delayed), runs a worker until they
are all done, and prints what happened to each.
"""

from __future__ import annotations

import asyncio

from s3queue import JobContext, Polling, Queue, Worker


async def send_email(payload: dict[str, str], ctx: JobContext) -> dict[str, bool]:
    print(f"attempt {ctx.attempt} of {ctx.message_id}: mail to {payload['to']}")
    if payload["to"].startswith("flaky") and ctx.attempt == 1:
        raise ConnectionError("SMTP server reset the connection")  # retried with backoff
    return {"sent": True}  # stored as the result


async def main() -> None:
    q = await Queue.open("file://.s3queue-example", "emails")
    ids = [
        await q.enqueue({"to": "ada@example.com"}, priority=5, dedup_key="welcome:ada"),
        await q.enqueue({"to": "ada@example.com"}, dedup_key="welcome:ada"),  # same id back
        await q.enqueue({"to": "bob@example.com"}, delay=2),
        await q.enqueue({"to": "flaky@example.com"}),
    ]
    finished = asyncio.Event()

    async def check(event: object) -> None:
        stats = await q.stats()
        if stats.pending + stats.delayed + stats.processing == 0:
            finished.set()

    worker = Worker(q, send_email, concurrency=4, polling=Polling(poll_interval=0.2))
    worker.on("completed", check)
    task = asyncio.create_task(worker.run())
    await finished.wait()
    await worker.stop()  # finishes running jobs, releases unstarted leases
    await task
    for mid in dict.fromkeys(ids):
        info = await q.get(mid)
        assert info is not None
        print(f"{mid}: {info.status} after {info.attempts} attempt(s), result {info.result}")
    await q.close()


if __name__ == "__main__":
    asyncio.run(main())
