"""A sweeper process for tests/test_retention_crash.py: one collection pass over a
queue with its clock ``offset`` seconds ahead, that stops dead (for a kill -9) in
the middle of deleting: after its first batch it prints "deleting" and hangs."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from s3queue import Queue
from s3queue.core.sweep import Budget
from s3queue.storage import Storage, open_storage


class HangsMidway:
    """Delegates to ``inner``; the second delete_many never returns."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.batches = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self.batches += 1
        if self.batches == 2:
            print("deleting", flush=True)
            await asyncio.Event().wait()
        await self.inner.delete_many(keys)


async def main(url: str, queue: str, offset: float) -> None:
    storage: Any = HangsMidway(open_storage(url))
    q = await Queue.open(storage, queue, clock=lambda: time.time() + offset)
    await q.sweeper("doomed-sweeper").run(lease_for=600.0, budget=Budget())
    print("finished without hanging", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
