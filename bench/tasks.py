"""The task app the benchmarks run: one no-op task on the benchmark's queue, sent with
``await noop.enqueue(n)`` and run by a worker through the app's router (``--handler
task`` of ``python -m bench e2e``), to compare with a raw ``Queue``/``Worker``."""

from __future__ import annotations

import asyncio
from typing import Any

from s3queue import App, Queue

app = App()


@app.task(queue="bench", name="bench.noop")
async def noop(n: int) -> None:
    return None


#: Calls in flight at once: the producer's group commit batches them into segments.
IN_FLIGHT = 800


async def produce(url: str, messages: int, shards: int) -> dict[str, Any]:
    """Create the queue with ``shards``, then send ``messages`` calls through the app;
    the app's requests from the first call on (its queue opened, the store probed)."""
    async with await Queue.open(url, "bench", shards=shards):
        pass
    app.url = url
    await noop.enqueue(-1)  # opens the app's queue: not per-message work
    store = app._storage  # the benchmark reads the app's private store to count requests
    assert store is not None
    store.counts.reset()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for start in range(0, messages - 1, IN_FLIGHT):
        chunk = range(start, min(messages - 1, start + IN_FLIGHT))
        await asyncio.gather(*(noop.enqueue(n) for n in chunk))
    elapsed = loop.time() - started
    counts = store.counts.snapshot()
    await app.aclose()
    return {"seconds": elapsed, "counts": counts}
