"""Priority across shards: does a priority-10 message get ahead of a backlog?

    python -m bench.priority [--backend s3] [--shards 4,16] [--trials 20] [--backlog 2000]

Each trial: a fresh queue; a producer enqueues ``--backlog`` priority-0 messages in
batches of 100 (so the backlog is in every shard), then one priority-10 message.
Then a worker (concurrency 8, its own Queue object: another process's view) starts
and its handler records the order in which jobs start. A trial passes when the
priority-10 message is among the first ``concurrency + prefetch`` jobs (the worker's
first claim; its prefetch starts at 0). ``--while-busy`` instead enqueues it while
the worker drains the backlog and counts the jobs that started between its enqueue
and its own start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

from bench.common import Backends, Row, ints, names, print_table, save
from s3queue import JobContext, Polling, Queue, Worker

CONCURRENCY = 8


async def trial(url: str, shards: int, backlog: int, busy: bool) -> int:
    """The position (0-based) at which the urgent message started."""
    name = f"p{uuid.uuid4().hex[:8]}"
    producer = await Queue.open(url, name, shards=shards)
    for start in range(0, backlog, 100):
        await producer.enqueue_many([{"n": n} for n in range(start, min(backlog, start + 100))])
    consumer = await Queue.open(url, name)
    started: list[str] = []
    urgent_started, quarter_done = asyncio.Event(), asyncio.Event()
    urgent: list[str] = []

    async def handler(payload: Any, ctx: JobContext) -> None:
        started.append(ctx.message_id)
        if payload.get("urgent"):
            urgent_started.set()
        if len(started) >= backlog // 4:
            quarter_done.set()
        await asyncio.sleep(0.005)  # a short job

    worker = Worker(consumer, handler, concurrency=CONCURRENCY, polling=Polling(poll_interval=0.2))
    if not busy:
        urgent.append(await producer.enqueue({"urgent": True}, priority=10))
    task = asyncio.create_task(worker.run())
    if busy:
        await quarter_done.wait()  # the worker is busy with the backlog
        urgent.append(await producer.enqueue({"urgent": True}, priority=10))
        before = len(started)
    await asyncio.wait_for(urgent_started.wait(), 120)
    await worker.stop()
    await task
    await producer.close()
    await consumer.close()
    position = started.index(urgent[0])
    return position - before if busy else position


async def cell(url: str, shards: int, trials: int, backlog: int, busy: bool) -> Row:
    positions = []
    began = time.monotonic()
    for _ in range(trials):
        positions.append(await trial(url, shards, backlog, busy))
    limit = CONCURRENCY  # the first claim: concurrency jobs, no prefetch yet
    return {
        "shards": shards,
        "mode": "enqueued while busy" if busy else "enqueued last",
        "trials": trials,
        "passed": sum(p < limit for p in positions) if not busy else None,
        "worst": max(positions),
        "positions": positions,
        "seconds": round(time.monotonic() - began, 1),
    }


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__)
    p.add_argument("--backend", type=names, default="s3")
    p.add_argument("--shards", type=ints, default="4,16")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--backlog", type=int, default=2000)
    p.add_argument("--while-busy", action="store_true")
    args = p.parse_args(argv)
    backends = Backends()
    rows = []
    try:
        for backend in args.backend:
            for shards in args.shards:
                url = backends.url(backend)
                row = asyncio.run(cell(url, shards, args.trials, args.backlog, args.while_busy))
                rows.append({"backend": backend, **row})
    finally:
        backends.close()
    columns = [("backend", "backend"), ("shards", "shards"), ("mode", "mode"),
               ("trials", "trials"), ("passed", "in first claim"),
               ("worst", "worst position"), ("seconds", "seconds")]  # fmt: skip
    print_table("priority-10 message behind a backlog", rows, columns)
    print(f"saved {save('priority', rows, ['priority', *argv])}")


if __name__ == "__main__":
    main(sys.argv[1:])
