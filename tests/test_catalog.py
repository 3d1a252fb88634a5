"""Listing the queues under a URL costs requests per queue, not per object."""

from __future__ import annotations

from s3queue import Queue
from s3queue.core.catalog import list_queues
from s3queue.storage import open_storage


async def test_queues_are_listed_without_reading_their_contents(store_url: str) -> None:
    storage = open_storage(store_url)
    for name in ("alpha", "b-2", "zeta"):
        q = await Queue.open(storage, name, shards=2)
        await q.enqueue_many([{"n": n} for n in range(50)])
        await q.enqueue_many([{"n": n} for n in range(50)])
        await q.close()
    await storage.put("stray/file.txt", b"not a queue")
    storage.counts.reset()
    assert await list_queues(storage) == ["alpha", "b-2", "zeta"]
    # One delimited LIST for the top-level names, one GET per name.
    assert storage.counts.list == 1
    assert storage.counts.get == 4
    await storage.close()
