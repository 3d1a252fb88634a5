"""Producer throughput: ``enqueue`` from 1 and from 64 concurrent tasks, and
``enqueue_many`` in batches of 10, 100 and 1,000 (one task, one batch at a time).
A fresh 4-shard queue per case; requests are counted after the queue is opened."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import (
    KINDS,
    Backends,
    Row,
    cost_per_million,
    per_message,
    print_table,
)
from s3queue import Queue

#: case -> messages (single enqueues from one task are slow on purpose: fewer).
CASES = {
    "enqueue x1 task": 500,
    "enqueue x64 tasks": 6400,
    "enqueue_many 10": 5000,
    "enqueue_many 100": 20000,
    "enqueue_many 1000": 20000,
}

COLUMNS = (
    ("backend", "backend"),
    ("case", "case"),
    ("messages", "messages"),
    ("msgs_per_s", "msg/s"),
    ("requests_per_msg", "req/msg"),
    ("get_per_msg", "GET"),
    ("put_per_msg", "PUT"),
    ("conditional_put_per_msg", "cond PUT"),
    ("list_per_msg", "LIST"),
    ("cost_per_million_usd", "$/M msgs"),
)


async def enqueue_case(url: str, case: str, messages: int) -> Row:
    q = await Queue.open(url, "bench", shards=4)
    q.storage.counts.reset()
    started = time.perf_counter()
    if case == "enqueue x1 task":
        for n in range(messages):
            await q.enqueue({"n": n})
    elif case == "enqueue x64 tasks":
        per_task = messages // 64

        async def task(t: int) -> None:
            for n in range(per_task):
                await q.enqueue({"n": t * per_task + n})

        await asyncio.gather(*(task(t) for t in range(64)))
        messages = per_task * 64
    else:
        size = int(case.rsplit(" ", 1)[1])
        for start in range(0, messages, size):
            await q.enqueue_many([{"n": n} for n in range(start, min(messages, start + size))])
    elapsed = time.perf_counter() - started
    counts = q.storage.counts.snapshot()
    await q.close()
    by_kind = per_message(counts, messages)
    return {
        "case": case,
        "messages": messages,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(messages / elapsed, 1),
        "requests": counts,
        "requests_per_msg": by_kind["total"],
        **{f"{kind}_per_msg": by_kind[kind] for kind in KINDS},
        "cost_per_million_usd": round(cost_per_million(counts, messages), 4),
    }


def run(args: Any, backends: Backends) -> list[Row]:
    rows = []
    for backend in args.backend:
        for case, messages in CASES.items():
            row = {
                "backend": backend,
                **asyncio.run(enqueue_case(backends.url(backend), case, messages)),
            }
            print_table("enqueue", [row], COLUMNS)
            rows.append(row)
    return rows
