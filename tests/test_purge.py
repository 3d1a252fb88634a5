"""Purge and delete remove objects: what a purge covers leaves the bucket, what it did
not see stays, readers take deleted segments for purged ones, and a queue deleted
under running processes is reported to them rather than recreated in part."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from s3queue import Backoff, Queue
from s3queue.core import layout, producer
from s3queue.core.cursor import Purge, purge_of
from s3queue.core.layout import SegmentRef
from s3queue.errors import QueueNotFound
from s3queue.ops.doctor import Doctor
from s3queue.storage import open_storage
from s3queue.storage.base import DELETE_BATCH, ObjectEntry, PutMode, RequestCounts, StoredObject
from tests.conftest import BUCKET
from tests.s3server import S3Server

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


async def open_queue(url: Any, clock: Clock, shards: int = 2) -> Queue:
    return await Queue.open(url, "q", shards=shards, clock=clock, backoff=Backoff(jitter=False))


@pytest.fixture
async def queue(store_url: str) -> AsyncIterator[Queue]:
    q = await open_queue(store_url, Clock())
    yield q
    await q.close()


async def keys(q: Queue) -> list[str]:
    return [e.key for e in await q.storage.list(layout.queue_prefix(q.name))]


def kinds(q: Queue, found: Sequence[str]) -> set[str | None]:
    return {layout.classify(q.name, key) for key in found}


async def fill(q: Queue) -> list[str]:
    """Messages of every kind the queue keeps: in the log, the express lane and a
    timer bucket; running, completed with a result, dead, deduplicated. Their ids."""
    ids = await q.enqueue_many([{"n": n} for n in range(6)])
    ids.append(await q.enqueue({"urgent": True}, priority=5))
    ids.append(await q.enqueue({"later": True}, delay=3600))
    ids.append(await q.enqueue({"once": True}, dedup_key="k"))
    leases = await q.claim(4, 30)
    await q.ack(leases[0], {"answer": 42})
    await q.fail(leases[1], "no", retriable=False)
    await q.settle()
    return ids


# --- purge ------------------------------------------------------------------------------


async def test_purge_deletes_every_segment_and_record_it_covers(queue: Queue) -> None:
    await fill(queue)
    await queue.storage.put(f"{layout.blobs_prefix('q')}big", b"x" * 10)
    before = await keys(queue)
    assert {"log", "high", "timer", "dead", "result", "dedup"} <= kinds(queue, before)
    await queue.purge()
    after = await keys(queue)
    # Only what the queue needs to go on: its settings, cursors, clock and wake objects.
    assert kinds(queue, after) - {"clock", "wake"} == {"settings", "cursor"}
    assert [k for k in after if layout.classify("q", k) == "cursor"] == [
        layout.cursor_key("q", 0),
        layout.cursor_key("q", 1),
    ]
    # And the queue works on, from where the purge left it.
    mid = await queue.enqueue({"after": True})
    [lease] = await queue.claim(10, 30)
    assert lease.id == mid


async def test_purge_deletes_in_batches_of_delete_objects(s3_server: S3Server) -> None:
    # Only S3 deletes in bulk: the other backends send one request per key.
    store_url = s3_server.url(BUCKET, f"t-{uuid.uuid4().hex[:12]}")
    q = await open_queue(store_url, Clock(), shards=1)
    try:
        await q.enqueue_many([{"n": n} for n in range(3)])
        for n in range(DELETE_BATCH + 50):
            await q.storage.put(f"{layout.blobs_prefix('q')}{n:05d}", b"")
        doomed = len(await keys(q)) - 2  # all but queue.json and the cursor
        q.storage.counts.reset()
        await q.purge()
        assert q.storage.counts.delete == math.ceil(doomed / DELETE_BATCH) == 2
    finally:
        await q.close()


def test_a_purge_covers_exactly_the_segments_listed() -> None:
    listed = [
        SegmentRef.log(0),
        SegmentRef.log(1),
        SegmentRef.high(0),
        SegmentRef.timer(1_800_000_060, 0),
        SegmentRef.timer(1_800_000_060, 1),
    ]
    op = purge_of(listed)
    assert op == Purge(log_end=2, timer_ends=((1_800_000_060, 2),), high_end=1)
    # The next segment of each lane (written after the listing) is past its end.
    assert op.log_end == SegmentRef.log(2).seq
    assert purge_of([]) == Purge(log_end=0)


class EnqueuesDuringListing:
    """A store on which another process enqueues right after the purge has listed
    shard 0's log: between the purge's listing and its commit."""

    def __init__(self, inner: Any, other: list[Queue]) -> None:
        self.inner = inner
        self.other = other
        self.enqueued: list[str] = []

    @property
    def url(self) -> str:
        return str(self.inner.url)

    @property
    def counts(self) -> RequestCounts:
        counts: RequestCounts = self.inner.counts
        return counts

    async def get(self, key: str) -> StoredObject | None:
        found: StoredObject | None = await self.inner.get(key)
        return found

    async def put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str:
        return str(await self.inner.put(key, data, mode))

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self.inner.delete_many(keys)

    async def list_prefixes(self, prefix: str) -> list[str]:
        found: list[str] = await self.inner.list_prefixes(prefix)
        return found

    async def list(
        self, prefix: str, *, start_after: str | None = None, limit: int | None = None
    ) -> list[ObjectEntry]:
        found: list[ObjectEntry] = await self.inner.list(
            prefix, start_after=start_after, limit=limit
        )
        if prefix == layout.log_prefix("q", 0) and self.other and not self.enqueued:
            self.enqueued.append(await self.other[0].enqueue({"during": True}))
        return found

    async def close(self) -> None:
        return None


async def test_a_segment_written_after_the_purge_listed_its_shard_stays(store_url: str) -> None:
    clock = Clock()
    storage = open_storage(store_url)
    other: list[Queue] = []
    hooked = EnqueuesDuringListing(storage, other)
    q = await open_queue(hooked, clock, shards=1)
    producer_process = await open_queue(storage, clock, shards=1)
    try:
        old = await q.enqueue_many([{"n": n} for n in range(3)])
        await q.claim(1, 30)
        other.append(producer_process)
        await q.purge()
        [during] = hooked.enqueued
        assert during.startswith("0-L1-")  # the segment after the one listed
        assert [await q.get(mid) for mid in old] == [None, None, None]
        info = await q.get(during)
        assert info is not None
        assert info.status == "pending"
        assert layout.SegmentRef.log(1).key("q", 0) in await keys(q)
        q.committers[0].forget_misses()  # as the producer's wake-up would
        [lease] = await q.claim(10, 30)
        assert lease.id == during
    finally:
        await producer_process.close()
        await q.close()
        await storage.close()


async def test_after_a_purge_get_stats_and_doctor_report_no_corruption(store_url: str) -> None:
    clock = Clock()
    q = await open_queue(store_url, clock)
    worker = await open_queue(store_url, clock)  # another process, with a cursor in cache
    try:
        ids = await fill(q)
        await worker.claim(1, 30)
        await q.purge()
        # The other process's window names segments that are gone, and its segment
        # cache lost them: its next claim must see a purge, not a corrupt shard.
        worker.segments.clear()
        assert await worker.claim(10, 30) == []
        fresh = await open_queue(store_url, clock)
        try:
            assert [await fresh.get(mid) for mid in ids] == [None] * len(ids)
            stats = await fresh.stats()
            assert stats.problems == []
            assert (stats.pending, stats.delayed, stats.processing, stats.dead) == (0, 0, 0, 0)
            assert await Doctor(fresh).examine() == []
        finally:
            await fresh.close()
        assert [k for k in await keys(q) if layout.classify("q", k) == "quarantine"] == []
    finally:
        await worker.close()
        await q.close()


# --- delete -------------------------------------------------------------------------------


async def test_delete_removes_every_object_and_open_creates_a_fresh_queue(store_url: str) -> None:
    clock = Clock()
    q = await open_queue(store_url, clock)
    await fill(q)
    await q.delete()
    await q.close()
    assert await keys(q) == []
    again = await open_queue(store_url, clock)
    try:
        stats = await again.stats()
        assert (stats.pending, stats.delayed, stats.dead, stats.completed) == (0, 0, 0, 0)
        mid = await again.enqueue({"fresh": True})
        [lease] = await again.claim(10, 30)
        assert lease.id == mid
    finally:
        await again.close()


async def test_a_worker_on_a_deleted_queue_is_told_and_recreates_nothing(store_url: str) -> None:
    clock = Clock()
    worker = await open_queue(store_url, clock)
    admin = await open_queue(store_url, clock)
    try:
        await worker.enqueue_many([{"n": n} for n in range(4)])
        lease = (await worker.claim(1, 30))[0]
        await admin.delete()
        with pytest.raises(QueueNotFound, match="queue 'q' was deleted"):
            await worker.ack(lease)
        shard = layout.parse_message_id(lease.id).shard
        with pytest.raises(QueueNotFound, match="was deleted"):
            await worker.sweep(shard, "cursor")
        with pytest.raises(QueueNotFound, match="was deleted"):
            await worker.arm_wake()
        assert await keys(worker) == []
    finally:
        await admin.close()
        await worker.close()


async def test_a_producer_on_a_deleted_queue_is_told_and_writes_nothing(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    new_producer = await open_queue(store_url, clock)  # has written nothing yet
    old_producer = await open_queue(store_url, clock)  # remembers its segment numbers
    admin = await open_queue(store_url, clock)
    try:
        await old_producer.enqueue_many([{"n": n} for n in range(4)])
        await admin.delete()
        with pytest.raises(QueueNotFound, match="was deleted"):
            await new_producer.enqueue({"late": True})
        # A remembered number is free in a deleted queue: the periodic check tells.
        monkeypatch.setattr(producer, "EXISTS_CHECK_INTERVAL", 0.0)
        with pytest.raises(QueueNotFound, match="was deleted"):
            await old_producer.enqueue_many([{"late": True}])
        assert await keys(admin) == []
    finally:
        for q in (admin, old_producer, new_producer):
            await q.close()


async def test_a_pool_stops_serving_a_deleted_queue_and_serves_the_others(store_url: str) -> None:
    from s3queue.runtime.queues import QueueSet

    clock = Clock()
    gone = await open_queue(store_url, clock)
    kept = await Queue.open(store_url, "kept", shards=1, clock=clock)
    try:
        await gone.enqueue({"n": 1})
        pool = QueueSet([gone, kept])
        await pool.claim_round(1, 30, owner="w")  # gone's cursor is cached now
        await kept.enqueue({"n": 2})
        admin = await open_queue(store_url, clock)
        await admin.delete()
        await admin.close()
        # Claims from a cached cursor that find nothing write nothing, so an idle
        # worker learns of the delete where it would write: arming before idling
        # (or its sweep, or a claim that takes something).
        await pool.arm_wake()
        assert pool.names == ["kept"]
        leases = (await pool.claim_round(5, 30, owner="w")).leases
        assert [lease.queue for lease in leases] == ["kept"]
        # Its last queue gone, a pool has nothing to serve: the error reaches the worker.
        with pytest.raises(QueueNotFound, match="was deleted"):
            await QueueSet([gone]).arm_wake()
    finally:
        await kept.close()
        await gone.close()
