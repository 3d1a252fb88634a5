"""Retention: what a sweeper pass collects, and what the queue says afterwards.

The queue's clock is real time plus an offset the tests move, so that the ages the
sweeper reads from listings (the store's own clock) and the queue's clock agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from s3queue import ConfigurationError, Queue, Retention, Worker
from s3queue.core import layout
from s3queue.core.cursor import Cursor, OpenSegment
from s3queue.core.retention import (
    CHECKPOINTS,
    Checkpoint,
    LaneRetention,
    ShardRetention,
    SweeperRecord,
    frontiers,
    is_collected,
    observe,
)
from s3queue.core.sweep import Budget
from s3queue.runtime.worker_settings import Polling
from s3queue.storage import Storage, open_storage

TTL = 60.0
DEAD_TTL = 120.0


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Storage]:
    storage = open_storage(store_url)
    yield storage
    await storage.close()


async def open_queue(store: Storage, clock: Clock, **more: Any) -> Queue:
    more.setdefault("retention", Retention(result_ttl=TTL, dead_ttl=DEAD_TTL))
    return await Queue.open(store, "q", shards=2, clock=clock, **more)


async def keys(store: Storage) -> list[str]:
    return sorted(e.key for e in await store.list("q/"))


async def finish(q: Queue, n: int) -> dict[str, list[str]]:
    """Enqueue ``n`` messages and finish them: every third fails for good, every
    third returns a value, the others return None (no record: "completed" is told
    by the cursor alone)."""
    ids = [await q.enqueue({"n": i}, max_attempts=1) for i in range(n)]
    done = 0
    while done < n:
        for lease in await q.claim(8):
            k = lease.payload["n"] % 3
            if k == 0:
                await q.fail(lease, RuntimeError("boom"))
            else:
                await q.ack(lease, {"n": lease.payload["n"]} if k == 1 else None)
            done += 1
    await q.settle()
    return {
        "dead": [m for i, m in enumerate(ids) if i % 3 == 0],
        "result": [m for i, m in enumerate(ids) if i % 3 == 1],
        "quiet": [m for i, m in enumerate(ids) if i % 3 == 2],
    }


# --- the pure rules ---------------------------------------------------------------------------


def test_frontiers_stop_at_the_first_segment_the_cursor_still_needs() -> None:
    cursor = Cursor(
        shard=0,
        next_seq=10,
        next_high=4,
        open=[
            OpenSegment(ref="L7", count=2, done=b"\x01"),
            OpenSegment(ref="T120.0", count=1, done=b"\x00"),
        ],
        timers={180: 0},
        timers_sealed_before=300,
    )
    assert frontiers(cursor) == {"log": 7, "high": 4, "timers": 120}
    assert frontiers(Cursor(shard=0, next_seq=3, timers_sealed_before=60)) == {
        "log": 3,
        "high": 0,
        "timers": 60,
    }


def test_a_segment_is_collectable_once_a_checkpoint_past_it_is_ttl_old() -> None:
    lane = observe(LaneRetention(), 5, now=1000.0, ttl=100.0)
    assert lane.collected_before == 0
    lane = observe(lane, 9, now=1050.0, ttl=100.0)
    assert lane.collected_before == 0
    # 5 was seen at 1000: ripe at 1100; 9 (seen at 1050) not yet.
    lane = observe(lane, 9, now=1100.0, ttl=100.0)
    assert lane.collected_before == 5
    lane = observe(lane, 9, now=1150.0, ttl=100.0)
    assert lane.collected_before == 9
    assert lane.checkpoints == []
    # Never backwards, whatever is seen.
    assert observe(lane, 3, now=2000.0, ttl=100.0).collected_before == 9


def test_checkpoints_stay_few_however_often_the_frontier_moves() -> None:
    lane = LaneRetention()
    for step in range(10_000):
        lane = observe(lane, step + 1, now=float(step), ttl=1_000_000.0)
    assert len(lane.checkpoints) <= CHECKPOINTS + 1
    # Merged checkpoints only ever delay collection: the newest covers the frontier.
    assert lane.checkpoints[-1] == Checkpoint(10_000, 9999.0)


def test_collected_is_per_shard_and_lane() -> None:
    record = SweeperRecord()
    address = layout.parse_message_id("1-L4-0")
    assert not is_collected(record, 1, address.segment)
    lane = LaneRetention(collected_before=5)
    record = SweeperRecord(shards={1: ShardRetention(log=lane)})
    assert is_collected(record, 1, address.segment)
    assert not is_collected(record, 0, address.segment)
    assert not is_collected(record, 1, layout.parse_message_id("1-H4-0").segment)


# --- a queue's life -----------------------------------------------------------------------------


async def test_nothing_is_collected_before_its_ttl(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    ids = await finish(q, 9)
    before = await keys(store)
    report = await q.collect()
    assert report.total == 0
    assert report.complete
    clock.advance(TTL - 5)
    assert (await q.collect()).total == 0
    assert set(before) <= set(await keys(store))
    assert (await q.get(ids["result"][0])).status == "completed"  # type: ignore[union-attr]
    await q.close()


async def test_after_the_ttl_segments_and_results_go_and_get_says_expired(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    ids = await finish(q, 12)
    await q.collect()  # sees the cursors' frontiers now
    clock.advance(TTL + 1)
    report = await q.collect()
    assert report.removed["segments"] == 12  # one segment per enqueue
    assert report.removed["results"] == 4
    for mid in ids["result"] + ids["quiet"]:
        info = await q.get(mid)
        assert info is not None, mid
        assert info.status == "expired", mid
        assert info.payload is None
        assert info.result is None
    # Dead letters are kept their own, longer TTL.
    for mid in ids["dead"]:
        info = await q.get(mid)
        assert info is not None
        assert info.status == "dead"
        assert info.payload is not None
        assert info.errors
    clock.advance(DEAD_TTL)
    report = await q.collect()
    assert report.removed["dead"] == 4
    assert {(await q.get(mid)).status for mid in ids["dead"]} == {"expired"}  # type: ignore[union-attr]
    left = await keys(store)
    kinds = {layout.classify("q", k) for k in left}
    assert kinds <= {"settings", "cursor", "sweeper", "clock", "wake"}, left
    await q.close()


async def test_live_messages_are_never_collected(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    await finish(q, 6)
    waiting = [await q.enqueue({"live": i}) for i in range(5)]
    delayed = await q.enqueue({"later": True}, delay=10 * TTL)
    [held] = await q.claim(1, visibility_timeout=10 * TTL)
    await q.collect()
    clock.advance(TTL + 1)
    report = await q.collect()
    assert report.removed["segments"] == 6
    for mid in waiting:
        info = await q.get(mid)
        assert info is not None
        assert info.status in ("pending", "processing")
    assert (await q.get(delayed)).status == "delayed"  # type: ignore[union-attr]
    # Everything still runs: the held one acks, the rest are claimed.
    await q.ack(held)
    got: list[Any] = []
    clock.advance(10 * TTL)
    while len(got) < 5:
        batch = await q.claim(10)
        assert batch
        for lease in batch:
            got.append(lease.payload)
            await q.ack(lease)
    expected = [{"live": i} for i in range(5)] + [{"later": True}]
    assert sorted(map(str, [*got, held.payload])) == sorted(map(str, expected))
    await q.close()


async def test_one_sweeper_at_a_time_and_a_dead_one_is_replaced(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    first, second = q.sweeper("worker-a"), q.sweeper("worker-b")
    report = await first.run(lease_for=30.0, budget=Budget())
    assert report.held_by is None
    report = await second.run(lease_for=30.0, budget=Budget())
    assert report.held_by == "worker-a"
    assert report.total == 0
    # worker-a stops renewing (it died): after its lease and the skew margin, b takes over.
    clock.advance(30.0 + 2.0)
    assert (await second.run(lease_for=30.0, budget=Budget())).held_by is None
    assert (await first.run(lease_for=30.0, budget=Budget())).held_by == "worker-b"
    # A worker that stops gives the lease back at once.
    await second.release()
    assert (await first.run(lease_for=30.0, budget=Budget())).held_by is None
    await q.close()


async def test_a_budget_stops_a_pass_and_the_next_goes_on(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    await finish(q, 9)
    sweeper = q.sweeper("w")
    await sweeper.run(lease_for=30.0, budget=Budget())
    clock.advance(TTL + 1)
    small = await sweeper.run(lease_for=30.0, budget=Budget(6))
    assert not small.complete
    rest = await sweeper.run(lease_for=30.0, budget=Budget())
    assert rest.complete
    assert small.removed["segments"] + rest.removed["segments"] == 9
    await q.close()


async def test_retention_is_stored_and_changed_on_purpose(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    assert (q.settings.result_ttl, q.settings.dead_ttl) == (TTL, DEAD_TTL)
    with pytest.raises(ConfigurationError, match="keeps results"):
        await open_queue(store, clock, retention=Retention(result_ttl=1.0))
    settings = await q.configure(Retention(result_ttl=3600.0, dead_ttl=7200.0))
    assert settings.revision == 1
    reopened = await Queue.open(store, "q", clock=clock)
    assert (reopened.settings.result_ttl, reopened.settings.dead_ttl) == (3600.0, 7200.0)
    with pytest.raises(ConfigurationError, match="result_ttl"):
        Retention(result_ttl=0)
    await reopened.close()
    await q.close()


async def test_a_shorter_ttl_applies_to_what_finished_before(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock, retention=Retention(result_ttl=3600.0, dead_ttl=3600.0))
    ids = await finish(q, 3)
    await q.collect()
    await q.configure(Retention(result_ttl=TTL, dead_ttl=DEAD_TTL))
    clock.advance(TTL + 1)
    await q.collect()
    assert (await q.get(ids["result"][0])).status == "expired"  # type: ignore[union-attr]
    await q.close()


async def test_workers_sweep_in_the_background(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    ids = await finish(q, 6)
    clock.advance(TTL + 1)
    await q.collect()  # frontiers seen now; ripe one TTL later
    clock.advance(TTL + 1)
    worker = Worker(q, lambda payload, ctx: None, polling=Polling(sweep_interval=0.01))
    task = asyncio.create_task(worker.run())
    while worker.upkeep.removed < 6:
        await worker.upkeep.swept.wait()
        worker.upkeep.swept.clear()
    await worker.stop()
    await task
    assert (await q.get(ids["quiet"][0])).status == "expired"  # type: ignore[union-attr]
    record = await q.sweeper().read()
    assert record[0].lease is None  # given back when the worker stopped
    # Each pass read the lease, the settings and 2 cursors, and wrote the lease.
    assert worker.upkeep.requests >= 5 * worker.upkeep.passes > 0
    await q.close()
