"""Clock skew between machines: nothing lost, nothing run twice, delays kept.

    python -m bench.skew [--backend s3] [--offsets 1.5,30,600] [--uncorrected]

Each cell plays three machines in one process, with injected clocks (the machine's
own clock is not touched): a producer ``offset`` seconds off, worker A on time,
worker B ``offset`` seconds off (so A and B disagree by ``offset`` too), for both
signs of the offset. The producer enqueues 200 messages to run now, 20 delayed by
5 s (kept in the log) and 10 delayed by 130 s (a timer bucket); both workers run
them with 5 s leases. A third, on-time observer asks for the status of every
delayed message that has not started, once a second.

Per cell: messages never run (lost), messages run twice, delayed messages reported
completed before they ran, and how early or late delayed messages started against
their delay (real time: every machine here is one machine). ``--uncorrected`` gives
every queue a plain clock function (trusted as is), which is how s3queue told time
before it measured the store's clock: the same cells, without the fix. The two
signs of an offset run at once, the offsets one after the other: about 7 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.common import Backends, Row, names, print_table, save
from s3queue import JobContext, Leases, Queue, Worker
from s3queue.core.clock import StoreClock

NOW, SOON, LATER = 200, 20, 10
SOON_DELAY, LATER_DELAY = 5.0, 130.0


def clock(offset: float, corrected: bool) -> Callable[[], float]:
    local = lambda: time.time() + offset  # noqa: E731 - a machine's clock, off by offset
    return StoreClock(local) if corrected else local


async def run_cell(url: str, offset: float, corrected: bool) -> Row:
    name = f"skew{uuid.uuid4().hex[:8]}"
    producer = await Queue.open(url, name, shards=4, clock=clock(offset, corrected))
    queues = [await Queue.open(url, name, clock=clock(o, corrected)) for o in (0.0, offset)]
    observer = await Queue.open(url, name, clock=clock(0.0, corrected))
    runs: dict[str, list[float]] = {}
    due: dict[str, float] = {}

    async def handler(payload: Any, ctx: JobContext) -> None:
        runs.setdefault(ctx.message_id, []).append(time.time())
        await asyncio.sleep(0.02)  # a short job

    workers = [
        Worker(q, handler, concurrency=8, leases=Leases(visibility_timeout=5.0)) for q in queues
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    now_ids = await producer.enqueue_many([{"n": n} for n in range(NOW)])
    for delay, count in ((SOON_DELAY, SOON), (LATER_DELAY, LATER)):
        for n in range(count):
            due[await producer.enqueue({"delayed": n}, delay=delay)] = time.time() + delay
    early_done = await watch_delayed(observer, due, runs)
    for worker in workers:
        await worker.stop()
    await asyncio.gather(*tasks)
    for q in (producer, *queues, observer):
        await q.close()
    lateness = [runs[mid][0] - at for mid, at in due.items() if mid in runs]
    every = [*now_ids, *due]
    return {
        "offset_s": offset,
        "messages": len(every),
        "lost": sum(mid not in runs for mid in every),
        "run_twice": sum(len(runs.get(mid, [])) > 1 for mid in every),
        "done_before_run": early_done,
        "earliest_s": round(min(lateness), 2) if lateness else None,
        "latest_s": round(max(lateness), 2) if lateness else None,
    }


async def watch_delayed(observer: Queue, due: dict[str, float], runs: dict[str, Any]) -> int:
    """Until every delayed message ran (or 30 s past the last due time): how many
    were reported completed (or dead) before they had run."""
    reported_early: set[str] = set()
    deadline = max(due.values()) + 30
    while time.time() < deadline and not all(mid in runs for mid in due):
        for mid in [m for m in due if m not in runs]:
            info = await observer.get(mid)
            if info is not None and info.status in ("completed", "dead") and mid not in runs:
                reported_early.add(mid)
        await asyncio.sleep(1.0)  # the observer's pace: one look a second
    await asyncio.sleep(2.0)  # let the last ones finish
    return len(reported_early)


async def run_all(url: str, offsets: list[float], corrected: bool) -> list[Row]:
    # The two signs of one offset at once; offsets one after the other: with more
    # cells at once, one process's event loop lags by seconds and so would delays.
    rows: list[Row] = []
    for offset in offsets:
        rows.extend(await asyncio.gather(*(run_cell(url, o, corrected) for o in (offset, -offset))))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.skew", description=__doc__)
    p.add_argument("--backend", type=names, default="s3")
    p.add_argument("--offsets", default="1.5,30,600")
    p.add_argument("--uncorrected", action="store_true")
    args = p.parse_args(argv)
    offsets = [float(x) for x in args.offsets.split(",") if x]
    backends = Backends()
    rows: list[Row] = []
    try:
        for backend in args.backend:
            cells = asyncio.run(run_all(backends.url(backend), offsets, not args.uncorrected))
            mode = "uncorrected" if args.uncorrected else "store clock"
            rows.extend({"backend": backend, "clocks": mode, **row} for row in cells)
    finally:
        backends.close()
    columns = [("backend", "backend"), ("clocks", "clocks"), ("offset_s", "offset s"),
               ("messages", "messages"), ("lost", "lost"), ("run_twice", "run twice"),
               ("done_before_run", "done before run"), ("earliest_s", "earliest s"),
               ("latest_s", "latest s")]  # fmt: skip
    print_table("clock skew", rows, columns)
    print(f"saved {save('skew', rows, ['skew', *argv])}")


if __name__ == "__main__":
    main(sys.argv[1:])
