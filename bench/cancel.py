"""Cancellation: what a worker's heartbeat costs with long jobs, and how soon a running
job learns it was cancelled.

    python -m bench.cancel [--backend s3] [--jobs 8,32] [--trials 20] [--heartbeat-only]

Heartbeat: one worker (in this process) runs ``--jobs`` jobs that wait until released,
spread over 4 shards, with a visibility timeout of 1.5 s (a beat every 0.5 s); once all
run, the storage requests of 6 s (12 beats) are counted. A worker extends every
running lease at each beat (the answer says whether the job was cancelled), and the
extensions of one shard share a cursor write. ``--heartbeat-only`` measures just this,
so that it runs against a version of s3queue without cancellation too.

Cancel latency: with a visibility timeout of 3 s (a beat every second), an async job
starts, is cancelled at a random point of a beat, and the time from ``Queue.cancel``
returning to the worker's ``cancelled`` event is measured, ``--trials`` times: at most
a beat plus a cursor write.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from typing import Any

from bench.common import Backends, Row, ints, names, print_table, save
from s3queue import JobContext, Leases, Polling, Queue, Worker

SHARDS = 4
BEAT_TIMEOUT = 1.5
WINDOW = 6.0


async def heartbeat_cost(url: str, jobs: int) -> Row:
    q = await Queue.open(url, f"beat{jobs}", shards=SHARDS)
    for n in range(jobs):
        await q.enqueue({"n": n})  # one at a time: the shards take turns
    all_running, release = asyncio.Event(), asyncio.Event()
    running = 0

    async def wait(payload: Any, ctx: JobContext) -> None:
        nonlocal running
        running += 1
        if running == jobs:
            all_running.set()
        await release.wait()

    leases = Leases(visibility_timeout=BEAT_TIMEOUT)
    worker = Worker(q, wait, concurrency=jobs, leases=leases, polling=Polling(poll_interval=1))
    task = asyncio.create_task(worker.run())
    await all_running.wait()
    await asyncio.sleep(BEAT_TIMEOUT)  # past the first beat
    before = q.storage.counts.snapshot()
    await asyncio.sleep(WINDOW)  # the beats are what is measured
    after = q.storage.counts.snapshot()
    release.set()
    await worker.stop()
    await task
    await q.close()
    beats = WINDOW / (BEAT_TIMEOUT / 3)
    made = {kind: after[kind] - before[kind] for kind in ("get", "put", "conditional_put")}
    return {"jobs": jobs, "shards": SHARDS, "beats": beats, "requests": sum(made.values()),
            "cursor_writes": made["conditional_put"], "get": made["get"],
            "writes_per_beat": round(made["conditional_put"] / beats, 2)}  # fmt: skip


async def cancel_latency(url: str, trials: int) -> list[float]:
    q = await Queue.open(url, "latency", shards=SHARDS)
    started: asyncio.Queue[str] = asyncio.Queue()
    stopped: asyncio.Queue[float] = asyncio.Queue()

    async def forever(payload: Any, ctx: JobContext) -> None:
        await started.put(ctx.message_id)
        await asyncio.Event().wait()  # until cancelled

    worker = Worker(q, forever, leases=Leases(visibility_timeout=3.0), polling=Polling(0.05))
    worker.on("cancelled", lambda event: stopped.put_nowait(time.monotonic()))
    task = asyncio.create_task(worker.run())
    waits = []
    for _ in range(trials):
        await q.enqueue({})
        mid = await started.get()
        # Trials would otherwise follow the beat in step (each starts just after the
        # one before ended, on a beat): cancel at a random point of it.
        await asyncio.sleep(random.uniform(0.0, 1.0))
        await q.cancel([mid])
        asked = time.monotonic()
        waits.append(await stopped.get() - asked)
    await worker.stop()
    await task
    await q.close()
    return sorted(waits)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cancel", description=__doc__)
    p.add_argument("--backend", type=names, default="s3")
    p.add_argument("--jobs", type=ints, default="8,32")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--heartbeat-only", action="store_true")
    args = p.parse_args(argv)
    backends = Backends()
    rows: list[Row] = []
    try:
        for backend in args.backend:
            for jobs in args.jobs:
                row = asyncio.run(heartbeat_cost(backends.url(backend), jobs))
                rows.append({"backend": backend, **row})
            if not args.heartbeat_only:
                waits = asyncio.run(cancel_latency(backends.url(backend), args.trials))
                rows.append({"backend": backend, "trials": len(waits),
                             "median_s": round(statistics.median(waits), 3),
                             "max_s": round(waits[-1], 3)})  # fmt: skip
    finally:
        backends.close()
    print_table("heartbeat with long jobs (a beat every 0.5 s)", [r for r in rows if "jobs" in r],
                [("backend", "backend"), ("jobs", "jobs"), ("shards", "shards"),
                 ("beats", "beats"), ("requests", "requests"), ("cursor_writes", "cursor PUT"),
                 ("writes_per_beat", "PUT/beat")])  # fmt: skip
    print_table("cancel to cancelled event (a beat every 1 s)",
                [r for r in rows if "trials" in r],
                [("backend", "backend"), ("trials", "trials"), ("median_s", "median s"),
                 ("max_s", "max s")])  # fmt: skip
    print(f"saved {save('cancel', rows, ['cancel', *argv])}")


if __name__ == "__main__":
    main(sys.argv[1:])
