"""Cancelling jobs: one that has not started never runs; a running one is told to stop.

python examples/cancelling.py
"""

import asyncio

from s3queue import JobContext, Leases, Polling, Queue, Worker


async def render(payload: dict[str, str], ctx: JobContext) -> str:
    print(f"rendering {payload['video']}")
    await asyncio.sleep(3600)  # cancelled here: CancelledError, which is not a failure
    return "rendered"


async def main() -> None:
    q = await Queue.open("file://.s3queue-example", "videos")
    later = await q.enqueue({"video": "b.mp4"}, delay=600)
    [outcome] = await q.cancel([later])
    print(f"{later}: {outcome.status} ({outcome.detail})")  # it will never run

    running = await q.enqueue({"video": "a.mp4"})
    started, stopped = asyncio.Event(), asyncio.Event()
    # The worker renews leases every visibility_timeout / 3 seconds: that is when a
    # running job learns it was cancelled.
    leases = Leases(visibility_timeout=3)
    worker = Worker(q, render, leases=leases, polling=Polling(poll_interval=0.2))
    worker.on("processing", lambda event: started.set())
    worker.on("cancelled", lambda event: stopped.set())
    task = asyncio.create_task(worker.run())
    await started.wait()
    [outcome] = await q.cancel([running])
    print(f"{running}: {outcome.status} ({outcome.detail})")  # told to stop
    await stopped.wait()
    await worker.stop()
    await task
    for mid in (later, running):
        info = await q.get(mid)
        print(f"{mid}: {info.status if info else 'unknown'}")  # cancelled, both
    await q.close()


if __name__ == "__main__":
    asyncio.run(main())
