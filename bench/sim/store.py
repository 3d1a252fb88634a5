"""The simulated S3 under the pods: one shared store, and each pod's view of it.

:class:`SimStore` holds the objects (the memory backend, stamped by the true
simulated clock with S3's whole-second Last-Modified), enforces S3's per-prefix
request rates (3,500 writes and 5,500 reads per second per prefix, 503 SlowDown
beyond), counts every request by kind, prefix and second, and hashes the ordered
request log into the run's trace.

:class:`PodView` is what one pod's ``RetryingStorage`` talks to: each request takes
a latency drawn from :class:`Latency` (times the region's spike factor while one
lasts), and may meet a seeded fault: a 500 before the store sees it, a timeout
(applied or not, the pod cannot tell), or for a write an ambiguous answer (applied,
the answer lost). A request lands halfway through its round trip; a pod that
crashes (its tasks cancelled) before then never sent it, one that crashes after has
written it without learning so: what ``kill -9`` does to requests in flight.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench.latency_store import READS_PER_SECOND, WRITES_PER_SECOND, TokenBucket, prefix_of
from s3queue.errors import PreconditionFailed, StorageUnavailable, Throttled
from s3queue.storage.base import (
    DELETE_BATCH,
    ObjectEntry,
    PutMode,
    RequestCounts,
    StoredObject,
    UpdateVersion,
    put_kind,
)
from s3queue.storage.memory import MemoryStorage

T = TypeVar("T")

#: Unix time of the simulation's second 0 (a fixed date, so that traces repeat).
EPOCH = 1_800_000_000.0
#: Lines of the request log kept for printing the window around a failed invariant.
TRACE_KEEP = 200_000


@dataclass(frozen=True, slots=True)
class Latency:
    """A request's round trip, S3 Standard-like by default: uniform in [low, high],
    and with probability ``tail`` uniform in [high, tail_max] instead."""

    low: float = 0.020
    high: float = 0.040
    tail: float = 0.01
    tail_max: float = 0.300

    def draw(self, rng: random.Random) -> float:
        if self.tail and rng.random() < self.tail:
            return rng.uniform(self.high, self.tail_max)
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request probabilities of each fault, drawn from the pod's seeded source."""

    #: 500 InternalError before the store sees the request.
    error: float = 0.0
    #: No answer within ``timeout_after`` seconds; applied or not, at even odds.
    timeout: float = 0.0
    #: A write applied, its answer lost (the pod sees a 500).
    ambiguous: float = 0.0
    timeout_after: float = 5.0

    @property
    def any(self) -> bool:
        return bool(self.error or self.timeout or self.ambiguous)


@dataclass(frozen=True, slots=True)
class Spike:
    """Every request's latency times ``factor`` from ``start`` to ``end`` (seconds)."""

    start: float
    end: float
    factor: float


@dataclass
class Tally:
    """What the store saw in the measured window."""

    counts: RequestCounts = field(default_factory=RequestCounts)
    cursor_writes: int = 0
    cursor_conflicts: int = 0
    #: (prefix, is_write, second) -> requests.
    per_second: Counter[tuple[str, bool, int]] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)


class SimStore:
    """The one bucket every pod shares; see the module docstring."""

    def __init__(
        self,
        now: Callable[[], float],
        *,
        limit_scale: float = 1.0,
        spike: Spike | None = None,
    ) -> None:
        self.now = now
        self.memory = MemoryStorage(clock=lambda: EPOCH + now())
        self.write_rate = WRITES_PER_SECOND * limit_scale
        self.read_rate = READS_PER_SECOND * limit_scale
        self.spike = spike
        self._buckets: dict[tuple[str, bool], TokenBucket] = {}
        self._trace = hashlib.sha256()
        self.requests = 0
        self.log: deque[str] = deque(maxlen=TRACE_KEEP)
        #: Set while the run is measuring (after the warm-up).
        self.tally: Tally | None = None
        #: Set when the run ends: a crashed pod's hanging requests give up.
        self.closing = False

    @property
    def trace(self) -> str:
        """A hash of every request so far, in order: equal seeds, equal traces."""
        return self._trace.hexdigest()[:16]

    def latency_factor(self) -> float:
        spike = self.spike
        return spike.factor if spike and spike.start <= self.now() < spike.end else 1.0

    def record(self, pod: str, op: str, key: str, outcome: str) -> None:
        line = f"{self.now():.6f} {pod} {op} {key} {outcome}"
        self._trace.update(line.encode())
        self.log.append(line)
        self.requests += 1

    def admit(self, key: str, write: bool) -> bool:
        """Take a token from the key's prefix bucket (one second's worth at most)."""
        prefix, now = prefix_of(key), self.now()
        bucket = self._buckets.get((prefix, write))
        if bucket is None:
            rate = self.write_rate if write else self.read_rate
            bucket = self._buckets[(prefix, write)] = TokenBucket(rate, max(1.0, rate), now)
        if self.tally is not None:
            self.tally.per_second[(prefix, write, int(now))] += 1
        return bucket.take(now)

    def count(self, kind: str, key: str, mode: PutMode | None, outcome: str) -> None:
        tally = self.tally
        if tally is None:
            return
        tally.counts.add(kind)
        if isinstance(mode, UpdateVersion) and key.endswith("/cursor"):
            tally.cursor_writes += 1
            tally.cursor_conflicts += outcome == "412"


class PodView:
    """One pod's connection to the :class:`SimStore`; implements ``Storage``."""

    def __init__(self, store: SimStore, pod: str, rng: random.Random, latency: Latency) -> None:
        self.store = store
        self.pod = pod
        self.rng = rng
        self.latency = latency
        self.faults = Faults()
        self.dead = False
        self._counts = RequestCounts()

    @property
    def url(self) -> str:
        return f"sim://{self.pod}"

    @property
    def counts(self) -> RequestCounts:
        return self._counts

    async def _hang(self) -> None:
        await asyncio.get_running_loop().create_future()  # a dead pod hears nothing

    def _fault(self, write: bool) -> str:
        f = self.faults
        if not f.any:
            return ""
        draw = self.rng.random()
        if draw < f.error:
            return "error"
        if draw < f.error + f.timeout:
            return "timeout"
        if write and draw < f.error + f.timeout + f.ambiguous:
            return "ambiguous"
        return ""

    async def _request(
        self, kind: str, key: str, apply: Callable[[], Awaitable[T]], mode: PutMode | None = None
    ) -> T:
        if self.dead:
            if self.store.closing:
                raise asyncio.CancelledError
            await self._hang()
        write = kind not in ("get", "list")
        fault = self._fault(write)
        half = self.latency.draw(self.rng) * self.store.latency_factor() / 2
        if fault == "timeout":
            half = self.faults.timeout_after / 2
        await asyncio.sleep(half)
        if fault == "error" or (fault == "timeout" and self.rng.random() < 0.5):
            if fault == "timeout":
                await asyncio.sleep(half)  # it never landed; the answer still takes as long
            return await self._fail(kind, key, fault)
        reached = "applied"
        try:
            result = await self._apply(kind, key, apply, mode, write)
        except PreconditionFailed:
            if not fault:
                raise
            # The store refused the write and the answer was lost: the pod sees a
            # 500 and cannot tell whether its write landed (the retry layer's case).
            reached = "refused"
        await asyncio.sleep(half)
        if fault:
            return await self._fail(kind, key, fault, reached)
        return result

    async def _apply(
        self,
        kind: str,
        key: str,
        apply: Callable[[], Awaitable[T]],
        mode: PutMode | None,
        write: bool,
    ) -> T:
        store = self.store
        self._counts.add(kind)
        if not store.admit(key, write):
            store.record(self.pod, kind, key, "503")
            store.count(kind, key, mode, "503")
            if store.tally is not None:
                store.tally.faults["slowdown"] += 1
            await asyncio.sleep(self.latency.low)
            raise Throttled(f"503 SlowDown (simulated) on {prefix_of(key)}", status_code=503)
        try:
            result = await apply()
        except PreconditionFailed:
            store.record(self.pod, kind, key, "412")
            store.count(kind, key, mode, "412")
            raise
        store.record(self.pod, kind, key, "ok")
        store.count(kind, key, mode, "ok")
        return result

    async def _fail(self, kind: str, key: str, fault: str, reached: str = "") -> T:
        """Answer ``fault``; ``reached``: what the store did with the request
        (applied, refused), which the pod never learns."""
        self.store.record(self.pod, kind, key, f"{fault}+{reached}" if reached else fault)
        if self.store.tally is not None:
            self.store.tally.faults[fault] += 1
        if fault == "timeout":
            raise StorageUnavailable(f"timeout (simulated) on {key}")
        raise StorageUnavailable(f"500 InternalError (simulated) on {key}", status_code=500)

    async def get(self, key: str) -> StoredObject | None:
        found = await self._request("get", key, lambda: self.store.memory.get(key))
        if found is None or found.modified is None:
            return found
        # S3's Last-Modified has whole seconds.
        return StoredObject(found.data, found.etag, math.floor(found.modified), 1.0)

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        return await self._request(
            put_kind(mode), key, lambda: self.store.memory.put(key, data, mode), mode
        )

    async def delete(self, key: str) -> None:
        await self._request("delete", key, lambda: self.store.memory.delete(key))

    async def delete_many(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            delete = functools.partial(self.store.memory.delete_many, batch)
            await self._request("delete", batch[0], delete)

    async def list_prefixes(self, prefix: str) -> list[str]:
        return await self._request("list", prefix, lambda: self.store.memory.list_prefixes(prefix))

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        entries = await self._request(
            "list",
            prefix,
            lambda: self.store.memory.list(prefix, start_after=start_after, limit=limit),
        )
        return [
            ObjectEntry(e.key, e.size, None if e.modified is None else math.floor(e.modified))
            for e in entries
        ]

    async def close(self) -> None:
        return None
