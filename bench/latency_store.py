"""A storage wrapper that behaves like far-away S3: per-request latency, and S3's
per-prefix request-rate limits answered with 503 SlowDown.

S3 allows about 3,500 writes and 5,500 reads per second per prefix. Here a prefix is
the key up to and including its shard directory (``q/shards/0003/``), or the queue
directory for other keys. Each process enforces ``share`` of each limit, so that P
processes together stay within one S3 prefix's budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from s3queue.errors import Throttled
from s3queue.storage.base import ObjectEntry, RequestCounts, Storage, StoredObject

WRITES_PER_SECOND = 3500.0
READS_PER_SECOND = 5500.0


@dataclass
class _Bucket:
    rate: float
    tokens: float
    stamp: float

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def prefix_of(key: str) -> str:
    parts = key.split("/")
    if len(parts) > 2 and parts[1] == "shards":
        return "/".join(parts[:3]) + "/"
    return parts[0] + "/"


class LatencyStore:
    def __init__(self, inner: Storage, latency_ms: float = 25.0, share: float = 1.0) -> None:
        self.inner = inner
        self.latency = latency_ms / 1000
        self.share = share
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.slowdowns = 0

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def counts(self) -> RequestCounts:
        return self.inner.counts

    async def _enter(self, key: str, kind: str) -> None:
        await asyncio.sleep(self.latency * random.uniform(0.8, 1.2))  # the simulated round trip
        rate = (WRITES_PER_SECOND if kind == "w" else READS_PER_SECOND) * self.share
        bucket = self._buckets.setdefault(
            (prefix_of(key), kind), _Bucket(rate, rate, time.monotonic())
        )
        if not bucket.take():
            self.slowdowns += 1
            self.inner.counts.add("put" if kind == "w" else "get")  # a refused request is billed
            raise Throttled("503 SlowDown (simulated)", status_code=503)

    async def get(self, key: str) -> StoredObject | None:
        await self._enter(key, "r")
        return await self.inner.get(key)

    async def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        await self._enter(key, "w")
        return await self.inner.put(key, data, if_match=if_match, if_none_match=if_none_match)

    async def delete(self, key: str) -> None:
        await self._enter(key, "w")
        await self.inner.delete(key)

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        await self._enter(prefix, "r")
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def close(self) -> None:
        await self.inner.close()
