"""Latency at low load: from ``enqueue`` returning to the handler starting.

One process: a producer ``Queue`` enqueues 10 messages per second (on a fixed
schedule) for ``--seconds`` and records, per message id, when ``enqueue`` returned; a
``Worker`` on a second ``Queue`` object over its own store connection (so the producer
cannot wake it in memory: it finds work by polling, like a worker in another process)
records when each handler starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from typing import Any

from bench.common import Backends, Row, per_message, print_table
from s3queue import Polling, Queue, Worker
from s3queue.runtime.worker import JobContext

RATE = 10.0  # messages per second
POLLS = (0.1, 1.0)

COLUMNS = (
    ("backend", "backend"),
    ("poll_interval", "poll s"),
    ("messages", "messages"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("consumer_requests_per_s", "worker req/s"),
)


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p * len(sorted_values)))
    return sorted_values[rank - 1]


async def latency_case(url: str, poll: float, seconds: float) -> Row:
    producer = await Queue.open(url, "bench", shards=4)
    consumer = await Queue.open(url, "bench", verify_store=False)
    returned: dict[str, float] = {}
    started: dict[str, float] = {}
    count = int(seconds * RATE)
    all_started = asyncio.Event()

    async def handler(payload: Any, ctx: JobContext) -> None:
        started[ctx.message_id] = time.time()
        if len(started) >= count:
            all_started.set()

    worker = Worker(consumer, handler, concurrency=8, polling=Polling(poll_interval=poll))
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(2 * poll)  # let the worker reach its idle polling rhythm
    consumer.storage.counts.reset()
    begin = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, begin + i / RATE - time.monotonic()))  # the offered load
        mid = await producer.enqueue({"i": i})
        returned[mid] = time.time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), 60)
    elapsed = time.monotonic() - begin
    consumer_counts = consumer.storage.counts.snapshot()
    await worker.stop()
    await task
    await producer.close()
    await consumer.close()
    missing = [m for m in returned if m not in started]
    if missing:
        raise SystemExit(f"{len(missing)} messages never reached the handler within 60 s")
    waits = sorted(max(0.0, started[m] - returned[m]) * 1000 for m in returned)
    return {
        "poll_interval": poll,
        "messages": count,
        "p50_ms": round(percentile(waits, 0.50), 1),
        "p90_ms": round(percentile(waits, 0.90), 1),
        "p99_ms": round(percentile(waits, 0.99), 1),
        "max_ms": round(waits[-1], 1),
        "mean_ms": round(statistics.fmean(waits), 1),
        "consumer_requests": consumer_counts,
        "consumer_requests_per_s": round(consumer_counts["total"] / elapsed, 1),
        "consumer_requests_per_msg": per_message(consumer_counts, count)["total"],
    }


def run(args: Any, backends: Backends) -> list[Row]:
    rows = []
    for backend in args.backend:
        for poll in POLLS:
            row = {
                "backend": backend,
                **asyncio.run(latency_case(backends.url(backend), poll, args.seconds)),
            }
            print_table("latency", [row], COLUMNS)
            rows.append(row)
    return rows
