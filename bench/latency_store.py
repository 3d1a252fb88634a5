"""A Storage wrapper that behaves like far-away S3: a round-trip latency on every
request, and S3's per-prefix request-rate limits answered with 503 SlowDown.

    Queue.open(RetryingStorage(LatencyStore(open_raw_storage(url))), name, shards=S)

Latency: ``latency_ms`` per request (default 25 ms), jittered uniformly by +-20%.

Limits: S3 allows about 3,500 writes (PUT, COPY, POST, DELETE) and 5,500 reads (GET,
HEAD; a LIST is a GET on the bucket and counts as a read here) per second per prefix. A
prefix is the key up to and including its shard directory (``q/shards/0003/``), or
the queue directory for every other key (``q/``). Each prefix and kind has a token
bucket holding at most one second of its rate; a request that finds it empty is
refused with :class:`s3queue.errors.Throttled` (503 SlowDown) after its round trip,
and counted as a billed request of its kind.

A Storage object cannot cross processes, so each process builds its own wrapper
and enforces ``share`` of each limit: P processes with ``share = 1/P`` together never
exceed one prefix's budget (stricter than S3, which would let one process use what
the others leave). ``limit_scale`` multiplies the limits, to provoke throttling at
the request rates a 2-core machine can reach.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from s3queue.core import layout
from s3queue.errors import Throttled
from s3queue.storage.base import (
    DELETE_BATCH,
    ObjectEntry,
    PutMode,
    RequestCounts,
    Storage,
    StoredObject,
    put_kind,
)

WRITES_PER_SECOND = 3500.0
READS_PER_SECOND = 5500.0
JITTER = 0.2


@dataclass
class TokenBucket:
    rate: float
    tokens: float
    stamp: float

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate)  # one second's worth, and never less than one request

    def take(self, now: float) -> bool:
        """Take a token at time ``now`` (seconds, the caller's clock), if one is left."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def prefix_of(key: str) -> str:
    """The S3 prefix a key's request rate counts against: its shard directory
    (``q/shards/0003/cursor`` -> ``q/shards/0003/``) or, for every other key, the
    queue's (``q/dead/x`` -> ``q/``)."""
    queue = layout.queue_of(key) or ""
    shard = layout.shard_of(queue, key)
    return layout.shard_prefix(queue, shard) + "/" if shard is not None else f"{queue}/"


class LatencyStore:
    """Implements the Storage protocol around ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Storage,
        latency_ms: float = 25.0,
        *,
        share: float = 1.0,
        limit_scale: float = 1.0,
    ) -> None:
        if latency_ms < 0 or not 0 < share <= 1 or limit_scale <= 0:
            raise ValueError("latency_ms >= 0, 0 < share <= 1 and limit_scale > 0")
        self.inner = inner
        self.latency = latency_ms / 1000
        self.write_rate = WRITES_PER_SECOND * share * limit_scale
        self.read_rate = READS_PER_SECOND * share * limit_scale
        self._buckets: dict[tuple[str, bool], TokenBucket] = {}
        #: 503 SlowDown answers given (each one a billed request, retried above us).
        self.slowdowns = 0

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def counts(self) -> RequestCounts:
        return self.inner.counts

    async def _round_trip(self, key: str, kind: str) -> None:
        await asyncio.sleep(self.latency * random.uniform(1 - JITTER, 1 + JITTER))
        write = kind not in ("get", "list")
        bucket = self._buckets.get((prefix_of(key), write))
        if bucket is None:
            rate = self.write_rate if write else self.read_rate
            bucket = TokenBucket(rate, max(1.0, rate), time.monotonic())
            self._buckets[(prefix_of(key), write)] = bucket
        if not bucket.take(time.monotonic()):
            self.slowdowns += 1
            self.inner.counts.add(kind)  # refused, yet a request on the bill
            raise Throttled(f"503 SlowDown (simulated) on {prefix_of(key)}", status_code=503)

    async def get(self, key: str) -> StoredObject | None:
        await self._round_trip(key, "get")
        return await self.inner.get(key)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        await self._round_trip(key, put_kind(mode))
        return await self.inner.put(key, data, mode)

    async def delete(self, key: str) -> None:
        await self._round_trip(key, "delete")
        await self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            await self._round_trip(keys[start], "delete")
        await self.inner.delete_many(keys)

    async def list_prefixes(self, prefix: str) -> list[str]:
        await self._round_trip(prefix, "list")
        return await self.inner.list_prefixes(prefix)

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        await self._round_trip(prefix, "list")
        return await self.inner.list(prefix, start_after=start_after, limit=limit)

    async def close(self) -> None:
        await self.inner.close()
