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
from s3queue.ops.doctor import Doctor
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
    return await Queue.open(store, "q", shards=more.pop("shards", 2), clock=clock, **more)


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
    # Observations closer than ttl / CHECKPOINTS to the newest are left out (which only
    # delays collection); the newest is never moved later, or it would never ripen.
    assert lane.checkpoints[0] == Checkpoint(1, 0.0)
    assert observe(lane, 10_001, now=1_000_000.0, ttl=1_000_000.0).collected_before == 1


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


async def test_timer_segments_go_once_their_bucket_is_long_past(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    mid = await q.enqueue({"later": True}, delay=600.0)
    assert any(layout.classify("q", k) == "timer" for k in await keys(store))
    clock.advance(601.0)
    [lease] = await q.claim(1)
    await q.ack(lease, "done")
    await q.settle()
    await q.collect()
    # Past the TTL, and past any producer whose clock is as far behind as tolerated.
    clock.advance(TTL + 600.0 + 900.0)
    assert await q.claim(1) == []  # a claim seals the buckets that are past
    await q.collect()
    clock.advance(TTL + 1)
    report = await q.collect()
    assert report.removed["segments"] >= 1
    assert report.removed["results"] == 1
    assert not any(layout.classify("q", k) == "timer" for k in await keys(store))
    assert (await q.get(mid)).status == "expired"  # type: ignore[union-attr]
    await q.close()


async def test_dedup_keys_links_and_blobs_are_collected(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock, dedup_retention=30.0)
    big = "x" * (300 * 1024)  # over the blob threshold: a payload blob, a result blob
    first = await q.enqueue({"big": big}, dedup_key="order-1")
    await q.link("other", "0-L0-0", first)
    [lease] = await q.claim(1)
    await q.ack(lease, {"echo": lease.payload["big"]})
    await q.settle()
    kinds = [layout.classify("q", k) for k in await keys(store)]
    assert kinds.count("blob") == 2
    assert "dedup" in kinds
    assert "link" in kinds
    await q.collect()
    # A payload blob goes once it is older than every segment kept by BLOB_GRACE.
    clock.advance(layout.BLOB_GRACE + TTL)
    report = await q.collect()
    assert report.removed["blobs"] == 2
    assert report.removed["dedup"] == 1
    assert report.removed["links"] == 1
    left = {layout.classify("q", k) for k in await keys(store)}
    assert left <= {"settings", "cursor", "sweeper", "clock", "wake"}, await keys(store)
    # The dedup key may be used again: a new message.
    assert await q.enqueue({"big": "no"}, dedup_key="order-1") != first
    await q.close()


async def test_a_fresh_dedup_key_is_kept(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)  # dedup_retention: a day
    first = await q.enqueue({"n": 1}, dedup_key="k")
    [lease] = await q.claim(1)
    await q.ack(lease)
    await q.settle()
    await q.collect()
    clock.advance(TTL + 1)
    report = await q.collect()
    assert report.removed["dedup"] == 0
    assert await q.enqueue({"n": 2}, dedup_key="k") == first
    await q.close()


async def test_a_swept_queue_is_healthy_to_the_doctor(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    ids = await finish(q, 6)
    await q.enqueue({"live": True})
    await q.collect()
    clock.advance(TTL + 1)
    await q.collect()
    assert await Doctor(q).examine() == []
    stats = await q.stats()
    assert stats.pending == 1
    assert stats.problems == []
    # An unreadable sweeper record: found, and rebuilt from what is left.
    await store.put(layout.sweeper_key("q"), b"garbage")
    [finding] = await Doctor(q).examine()
    assert finding.key == layout.sweeper_key("q")
    assert finding.repair is not None
    await finding.repair()
    assert await Doctor(q).examine() == []
    assert (await q.get(ids["quiet"][0])).status == "expired"  # type: ignore[union-attr]
    await q.close()


async def test_rebuilding_the_sweeper_record_twice_never_writes_equal_bytes(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    key = layout.sweeper_key("q")
    rebuilt: list[bytes] = []
    for _ in range(2):
        await store.put(key, b"garbage")
        [finding] = await Doctor(q).examine()
        assert finding.repair is not None
        await finding.repair()
        stored = await store.get(key)
        assert stored is not None
        rebuilt.append(stored.data)
    # The same queue, unchanged: only the nonce tells them apart (no ETag ABA).
    assert rebuilt[0] != rebuilt[1]
    await q.close()


def test_inspect_shows_nothing_made_up_for_an_expired_message() -> None:
    from rich.console import Console

    from s3queue.info import MessageInfo
    from s3queue.ops.cli import describe

    info = MessageInfo.expired("0-L3-1")
    console = Console(record=True, width=120)
    console.print(describe(info))
    shown = console.export_text()
    assert "expired" in shown
    assert "attempts" not in shown
    assert "1970" not in shown


# --- found in review: each was a failing test first ------------------------------------


async def test_busy_queue_segments_are_collected_after_their_ttl(
    store: Storage, clock: Clock
) -> None:
    """End to end: a message finishes between passes a second apart (TTL 60 s)."""
    q = await open_queue(store, clock, shards=1)
    removed = 0
    for _ in range(180):  # three TTLs
        await q.enqueue({"n": 1})
        (lease,) = await q.claim(1)
        await q.ack(lease)
        await q.settle()
        removed += (await q.collect()).removed["segments"]
        clock.advance(1.0)
    assert removed > 0
    await q.close()


# --- F2: payload blobs of messages in shards without a cursor --------------------------------


async def test_a_pending_payload_blob_survives_a_pass_before_any_worker_read_its_shard(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    mid = await q.enqueue({"big": "x" * 300_000})  # over the 256 KiB blob threshold
    assert any(layout.classify("q", k) == "blob" for k in [e.key for e in await store.list("q/")])
    clock.advance(layout.BLOB_GRACE + 60)  # nobody has claimed yet (e.g. workers start late)
    report = await q.collect()
    assert report.removed["blobs"] == 0, report.to_json()
    info = await q.get(mid)
    assert info is not None
    assert info.status == "pending"
    assert info.payload == {"big": "x" * 300_000}
    await q.close()


# --- F3: a pass restarts at shard 0 every time ------------------------------------------------


async def test_a_budgeted_pass_over_many_shards_still_reaches_the_dead_letters(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock, shards=16)
    ids = [await q.enqueue({"n": i}, max_attempts=1) for i in range(16)]
    while leases := await q.claim(16):
        for lease in leases:
            await q.fail(lease, RuntimeError("boom"))
    await q.settle()
    await q.collect()  # checkpoints at the current frontiers
    clock.advance(120.0 + 60.0 + 61)  # past dead_ttl and result_ttl
    removed = {"dead": 0, "segments": 0}
    sweeper = q.sweeper("worker-1")  # as runtime/upkeep.py keeps it
    for _ in range(20):  # twenty passes of a worker in an idle queue (Budget = FLOOR)
        report = await sweeper.run(lease_for=180.0, budget=Budget(64))
        for kind in removed:
            removed[kind] += report.removed[kind]
    assert removed == {"dead": 16, "segments": 16}, removed
    assert {(await q.get(m)).status for m in ids} == {"expired"}  # type: ignore[union-attr]
    await q.close()


# --- F4: a purge deletes the payload blobs of messages enqueued while it runs ----------------


async def test_a_message_enqueued_during_a_purge_keeps_its_payload(
    store: Storage, clock: Clock
) -> None:
    q = await open_queue(store, clock)
    producer = await open_queue(store, clock)
    await q.enqueue({"old": 1})
    purge_shard = q._purge_shard
    late: list[str] = []

    async def purge_shard_then_enqueue(shard: int) -> list[str]:
        doomed = await purge_shard(shard)
        if shard == q.settings.shards - 1:  # after the last shard's listing and commit
            late.append(await producer.enqueue({"big": "x" * 300_000}))
        return doomed

    q._purge_shard = purge_shard_then_enqueue  # type: ignore[method-assign]
    await q.purge()
    # The purge promises that a message enqueued after its listing stays, with its messages.
    info = await producer.get(late[0])
    assert info is not None
    assert info.status == "pending"
    assert info.payload == {"big": "x" * 300_000}
    await producer.close()
    await q.close()


# --- F5: chain links go by age alone, while the step they name still waits ---------------------


async def test_a_link_to_a_step_still_pending_is_kept(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    child = await q.enqueue({"step": 2})  # the next step of a chain, not run yet
    await q.link("parents", "0-L0-0", child)
    clock.advance(60.0 + 61)  # older than result_ttl, but the step has not even run
    await q.collect()
    assert (await q.get(child)).status == "pending"  # type: ignore[union-attr]
    # Chain.jobs() / Chain.result() follow this link; gone, they raise JobNotFound
    # ("step 1 completed without a link to it") for a chain whose step 2 is pending.
    assert await q.linked("parents", "0-L0-0") == child
    await q.close()


# --- F6: a sweeper record left over from a deleted queue of the same name ---------------------


async def test_a_recreated_queue_ignores_a_sweeper_record_of_its_predecessor(
    store: Storage, clock: Clock
) -> None:
    old = await open_queue(store, clock, shards=1)
    for i in range(5):
        await old.enqueue({"n": i})
        (lease,) = await old.claim(1)
        await old.ack(lease)
    await old.settle()
    await old.collect()
    clock.advance(121)
    await old.collect()
    stale = (await store.get(layout.sweeper_key("q"))).data  # type: ignore[union-attr]
    await old.delete()
    await old.close()
    # A worker's first pass that read queue.json just before the delete creates the
    # record (mode="create") after the delete's listing: it outlives the delete.
    await store.put(layout.sweeper_key("q"), stale, mode="create")
    new = await open_queue(store, clock, shards=1)
    mid = await new.enqueue({"fresh": True})
    assert (await new.get(mid)).status == "pending"  # type: ignore[union-attr]
    clock.advance(61)
    await new.collect()
    segment = layout.parse_message_id(mid).segment.key("q", 0)
    assert await store.get(segment) is not None  # a pending message's segment
    await new.close()


async def test_a_pass_that_outlasts_its_lease_stops_deleting(store: Storage, clock: Clock) -> None:
    q = await open_queue(store, clock)
    await finish(q, 6)
    sweeper = q.sweeper("slow")
    await sweeper.run(lease_for=30.0, budget=Budget())
    clock.advance(TTL + 1)
    # A lease shorter than the skew margin has run out by the first deletion.
    report = await sweeper.run(lease_for=1.0, budget=Budget())
    assert report.total == 0
    assert not report.complete
    report = await sweeper.run(lease_for=30.0, budget=Budget())
    assert report.removed["segments"] == 6
    await q.close()
