"""Cancelling jobs: the cursor's Cancel operation, Queue.cancel, and the worker.

The promises: a job cancelled before it started never runs; a running one is told
(its worker learns it at its next lease renewal) and ends "cancelled" however its
attempt ends; a cancelled job never completes afterwards, and a completed one is never
reported cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec
import pytest

from s3queue import (
    Backoff,
    CancelOutcome,
    ConfigurationError,
    JobContext,
    Leases,
    Queue,
    Worker,
    WorkerEvent,
    connect,
)
from s3queue.core import layout
from s3queue.core.cursor import (
    CANCELLED,
    Ack,
    Cancel,
    Cancellation,
    Claim,
    Claimed,
    Cursor,
    Extend,
    Extended,
    Fail,
    Finalize,
    Ingest,
    Operation,
    Purge,
    Quarantine,
    RegisterTimer,
    Release,
    Result,
    Rules,
    SealTimer,
    Stale,
    apply,
    next_due,
)
from s3queue.core.layout import SegmentRef
from s3queue.core.records import ErrorRecord
from s3queue.core.segment import Message, Segment
from tests.conftest import FAST, run_until

NOW = 1_800_000_000.0
RULES = Rules(skew_margin=2.0)
BOOM = ErrorRecord(attempt=1, at=NOW, type="ValueError", message="boom")


# --- the cursor operation (pure) ---------------------------------------------------------


class Shard:
    """One shard's cursor and its segments, driven one batch at a time."""

    def __init__(self) -> None:
        self.cursor = Cursor(shard=0)
        self.segments: dict[str, Segment] = {}
        self.now = NOW
        self.finishing: list[str] = []
        self.tokens = (f"t{n}" for n in itertools.count())

    def write(self, ref: SegmentRef, count: int = 2, max_attempts: int = 3) -> None:
        message = Message(
            payload=msgspec.Raw(b"1"), enqueued_at=NOW, visible_at=0.0, max_attempts=max_attempts
        )
        self.segments[str(ref)] = Segment(writer="w", created_at=NOW, messages=[message] * count)

    def apply(self, *ops: Operation) -> list[Result]:
        t = apply(
            self.cursor,
            list(ops),
            self.segments,
            now=self.now,
            commit="c",
            new_token=lambda: next(self.tokens),
            rules=RULES,
        )
        self.cursor = t.cursor
        self.finishing += t.finishing
        return t.results

    def cancel(self, mid: str) -> Cancellation:
        [result] = self.apply(Cancel(mid))
        assert isinstance(result, Cancellation)
        return result

    def ingest(self, ref: SegmentRef) -> None:
        assert self.apply(Ingest(ref, len(self.segments[str(ref)].messages))) == [True]

    def claim(self, n: int = 10, vt: float = 10.0) -> list[Claimed]:
        [result] = self.apply(Claim("w1", n, vt))
        assert isinstance(result, list)
        return result

    def finalize(self) -> None:
        """What the committer does once the records of finished messages are written."""
        done, self.finishing = self.finishing, []
        self.apply(Finalize(tuple(done)))


@pytest.fixture
def shard() -> Shard:
    """A shard whose log holds L0 (taken in) and L1 (written, not read yet)."""
    s = Shard()
    s.write(SegmentRef.log(0))
    s.write(SegmentRef.log(1))
    s.ingest(SegmentRef.log(0))
    return s


def test_a_waiting_message_is_cancelled_at_once_and_never_claimed(shard: Shard) -> None:
    assert shard.cancel("0-L0-0") == Cancellation("0-L0-0", "cancelled")
    assert [c.id for c in shard.claim()] == ["0-L0-1"]
    shard.finalize()
    assert "0-L0-0" not in shard.cursor.flights
    assert shard.claim() == []
    assert shard.cursor.counters.cancelled == 1


def test_a_message_waiting_for_its_retry_is_cancelled_at_once(shard: Shard) -> None:
    [lease, _] = shard.claim()
    shard.apply(Fail(lease.id, lease.token, BOOM, retriable=True, delay=5.0))
    assert shard.cancel(lease.id).status == "cancelled"
    shard.now += 10
    assert lease.id not in [c.id for c in shard.claim()]
    assert shard.cursor.flights[lease.id].errors == [BOOM]  # kept for its record


def test_a_running_message_is_cancelling_and_its_extend_says_so(shard: Shard) -> None:
    [lease, _] = shard.claim()
    assert shard.cancel(lease.id).status == "cancelling"
    assert shard.cursor.flights[lease.id].cancel_requested
    [extended] = shard.apply(Extend(lease.id, lease.token, 10.0))
    assert extended == Extended(NOW + 10.0, cancelled=True)
    assert shard.cancel(lease.id).status == "cancelling"  # asking twice changes nothing


def test_the_ack_of_a_cancelled_message_ends_it_cancelled_not_completed(shard: Shard) -> None:
    [lease, _] = shard.claim()
    shard.cancel(lease.id)
    assert shard.apply(Ack(lease.id, lease.token, msgspec.Raw(b'"done"'))) == [CANCELLED]
    outcome = shard.cursor.flights[lease.id].outcome
    assert outcome is not None
    assert outcome.status == "cancelled"
    assert not outcome.result
    assert shard.cursor.counters.completed == 0
    assert shard.cursor.counters.cancelled == 1


@pytest.mark.parametrize("retriable", [True, False])
def test_the_failure_of_a_cancelled_message_ends_it_cancelled(
    shard: Shard, retriable: bool
) -> None:
    [lease, _] = shard.claim()
    shard.cancel(lease.id)
    assert shard.apply(Fail(lease.id, lease.token, BOOM, retriable, 0.0)) == [CANCELLED]
    flight = shard.cursor.flights[lease.id]
    assert flight.outcome is not None
    assert flight.outcome.status == "cancelled"
    assert flight.errors == [BOOM]
    assert (shard.cursor.counters.dead, shard.cursor.counters.retried) == (0, 0)


def test_a_cancelled_lease_given_back_ends_cancelled(shard: Shard) -> None:
    [lease, _] = shard.claim()
    shard.cancel(lease.id)
    assert shard.apply(Release(lease.id, lease.token)) == [CANCELLED]
    assert lease.id not in [c.id for c in shard.claim()]


def test_a_cancelled_lease_that_expires_ends_cancelled_and_is_never_retried() -> None:
    s = Shard()
    s.write(SegmentRef.log(0), count=1, max_attempts=5)
    s.ingest(SegmentRef.log(0))
    [lease] = s.claim(vt=10.0)
    s.cancel(lease.id)
    s.now += 10.0 + RULES.skew_margin + 0.1
    assert s.claim() == []
    flight = s.cursor.flights[lease.id]
    assert flight.outcome is not None
    assert flight.outcome.status == "cancelled"
    assert [e.type for e in flight.errors] == ["LeaseExpired"]
    assert s.cursor.counters.recovered == 1


def test_a_stale_holder_cannot_complete_a_message_cancelled_after_its_lease_expired(
    shard: Shard,
) -> None:
    [lease, _] = shard.claim(vt=10.0)
    shard.now += 10.5  # expired, not yet recovered (within the skew margin)
    assert shard.cancel(lease.id).status == "cancelling"
    [stale] = shard.apply(Ack(lease.id, lease.token))
    assert isinstance(stale, Stale)
    shard.now += RULES.skew_margin
    shard.apply(Claim("w2", 0, 1.0))
    assert shard.cancel(lease.id) == Cancellation(lease.id, "finished", "cancelled")


def test_cancelling_a_finished_message_says_how_it_ended(shard: Shard) -> None:
    [done, dead] = shard.claim()
    shard.apply(Ack(done.id, done.token, msgspec.Raw(b"7")))
    shard.apply(Fail(dead.id, dead.token, BOOM, retriable=False, delay=0.0))
    assert shard.cancel(done.id) == Cancellation(done.id, "finished", "completed")
    assert shard.cancel(dead.id) == Cancellation(dead.id, "finished", "dead")
    shard.finalize()
    # Finalized: only its record can tell how (Queue.cancel reads it).
    assert shard.cancel(done.id) == Cancellation(done.id, "finished")
    assert shard.cursor.counters.cancelled == 0


def test_a_message_not_read_yet_is_finalized_only_once_its_segment_is_in_the_window(
    shard: Shard,
) -> None:
    assert shard.cancel("0-L1-1").status == "cancelled"
    assert shard.finishing == []  # nothing to write yet: the flight is the record
    shard.apply(Finalize(("0-L1-1",)))  # a Finalize that comes anyway changes nothing
    assert "0-L1-1" in shard.cursor.flights
    shard.ingest(SegmentRef.log(1))
    assert shard.finishing == ["0-L1-1"]
    assert [c.id for c in shard.claim()] == ["0-L0-0", "0-L0-1", "0-L1-0"]
    shard.finalize()
    assert shard.cursor.flights.keys() == {"0-L0-0", "0-L0-1", "0-L1-0"}
    assert shard.claim() == []


def test_a_message_in_a_timer_bucket_not_registered_yet_waits_for_it(shard: Shard) -> None:
    bucket = int(NOW) + 600
    ref = SegmentRef.timer(bucket, 0)
    shard.write(ref, count=1)
    assert shard.cancel(f"0-{ref}-0").status == "cancelled"
    assert shard.apply(RegisterTimer(bucket)) == [True]
    shard.now = bucket + 1.0
    shard.ingest(ref)
    assert shard.finishing == [f"0-{ref}-0"]
    assert f"0-{ref}-0" not in [c.id for c in shard.claim()]
    shard.finalize()
    shard.apply(SealTimer(bucket))
    assert not shard.cursor.flights.keys() & {f"0-{ref}-0"}
    assert shard.cancel(f"0-{ref}-0") == Cancellation(f"0-{ref}-0", "finished")


def test_a_message_of_a_sealed_timer_bucket_has_finished(shard: Shard) -> None:
    bucket = int(NOW) - 600
    shard.apply(RegisterTimer(bucket), SealTimer(bucket))
    assert shard.cancel(f"0-T{bucket}.0-0").status == "finished"


def test_an_id_that_names_no_message_is_not_found(shard: Shard) -> None:
    assert shard.cancel("0-L0-2").status == "not_found"  # past the window segment's end
    assert shard.cancel("0-L1-2").status == "not_found"  # past an unread segment's end
    assert shard.cancel("0-L7-0").status == "not_found"  # a segment nobody wrote
    assert shard.cancel("1-L0-0").status == "not_found"  # another shard's
    assert shard.cursor.flights == {}


def test_a_segment_set_aside_unread_takes_its_cancelled_messages_with_it(shard: Shard) -> None:
    shard.cancel("0-L1-0")
    shard.apply(Quarantine(SegmentRef.log(1)))
    assert shard.cursor.flights == {}
    assert shard.cursor.next_seq == 2


def test_purge_forgets_messages_cancelled_before_they_were_read(shard: Shard) -> None:
    shard.cancel("0-L1-0")
    shard.apply(Purge(log_end=2))
    assert shard.cursor.flights == {}
    assert shard.cursor.counters.cancelled == 0


def test_a_message_cancelled_unread_is_not_due_work(shard: Shard) -> None:
    shard.claim()  # takes L0 whole: the window holds nothing else to do
    shard.cancel("0-L1-0")
    due = next_due(shard.cursor, shard.segments, shard.now, RULES)
    assert due == NOW + 10.0 + RULES.skew_margin  # the leases' recovery, nothing else


# --- through the queue -------------------------------------------------------------------


async def test_a_pending_message_cancelled_ends_cancelled_past_its_finalization(
    queue: Queue,
) -> None:
    first, mid = await queue.enqueue_many([{"n": 1}, {"n": 2}])
    assert [lease.id for lease in await queue.claim(1, 30)] == [first]  # mid is in the window
    [outcome] = await queue.cancel([mid])
    assert (outcome.status, outcome.detail) == ("cancelled", "cancelled; it will not run")
    assert (await queue.get(mid)).status == "cancelled"  # type: ignore[union-attr]
    await queue.settle()
    cursor = await queue.committers[layout.parse_message_id(mid).shard].read()
    assert mid not in cursor.flights  # finalized: its record tells from now on
    assert (await queue.get(mid)).status == "cancelled"  # type: ignore[union-attr]
    assert await queue.claim(10, 30) == []
    assert (await queue.cancel([mid]))[0].finished_status == "cancelled"


async def test_a_message_cancelled_before_any_worker_read_it_is_finalized_once_read(
    queue: Queue,
) -> None:
    mid = await queue.enqueue({"n": 1})
    [outcome] = await queue.cancel([mid])
    assert outcome.status == "cancelled"
    committer = queue.committers[layout.parse_message_id(mid).shard]
    assert mid in (await committer.read()).flights  # waits there for its segment
    assert await queue.claim(10, 30) == []  # reads the segment, skips the message
    await queue.settle()
    assert mid not in (await committer.read()).flights
    assert (await queue.get(mid)).status == "cancelled"  # type: ignore[union-attr]


async def test_cancelling_a_completed_message_is_a_no_op_that_says_so(queue: Queue) -> None:
    quiet, with_result = await queue.enqueue_many([{"n": 1}, {"n": 2}])
    for lease in await queue.claim(2, 30):
        await queue.ack(lease, {"ok": True} if lease.id == with_result else None)
    for mid in (quiet, with_result):
        [outcome] = await queue.cancel([mid])
        assert outcome.status == "finished"
        assert (outcome.finished_status, outcome.detail) == ("completed", "already completed")
    await queue.settle()
    outcomes = await queue.cancel([quiet, with_result])
    assert [o.finished_status for o in outcomes] == ["completed", "completed"]
    assert (await queue.get(with_result)).result == {"ok": True}  # type: ignore[union-attr]
    assert (await queue.stats()).cancelled == 0


async def test_cancelling_a_dead_message_says_it_is_dead(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    [lease] = await queue.claim(1, 30)
    await queue.fail(lease, "no such mailbox", retriable=False)
    await queue.settle()
    [outcome] = await queue.cancel([mid])
    assert (outcome.status, outcome.finished_status) == ("finished", "dead")


async def test_a_message_waiting_for_a_retry_is_cancelled(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    [lease] = await queue.claim(1, 30)
    await queue.fail(lease, "boom", backoff=0.05)
    [outcome] = await queue.cancel([mid])
    assert outcome.status == "cancelled"
    await queue.settle()
    info = await queue.get(mid)
    assert info is not None
    assert (info.status, info.attempts, [e.message for e in info.errors]) == (
        "cancelled",
        1,
        ["boom"],
    )
    assert await queue.claim(1, 30) == []  # its retry would be due by now


async def test_a_running_message_cancelled_through_the_api_ends_cancelled(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    [lease] = await queue.claim(1, 30)
    [outcome] = await queue.cancel([mid])
    assert outcome.status == "cancelling"
    info = await queue.get(mid)
    assert info is not None
    assert (info.status, info.cancel_requested) == ("processing", True)
    assert (await queue.stats()).processing == 1
    await queue.extend(lease, 30)
    assert lease.cancel_requested
    await queue.ack(lease, "a result nobody asked for any more")
    await queue.settle()
    info = await queue.get(mid)
    assert info is not None
    assert (info.status, info.result) == ("cancelled", None)
    stats = await queue.stats()
    assert (stats.completed, stats.cancelled, stats.processing) == (0, 1, 0)


async def test_a_running_message_that_fails_after_its_cancel_ends_cancelled(
    queue: Queue,
) -> None:
    mid = await queue.enqueue({"n": 1})
    [lease] = await queue.claim(1, 30)
    await queue.cancel([mid])
    failure = await queue.fail(lease, "interrupted")
    assert failure.status == "cancelled"
    assert lease.cancel_requested
    assert await queue.claim(1, 30) == []


async def test_cancel_writes_each_shard_once(queue: Queue) -> None:
    ids = [m for n in range(5) for m in await queue.enqueue_many([{"n": n}, {"n": n}])]
    assert {layout.parse_message_id(m).shard for m in ids} == {0, 1}  # shards take turns
    before = queue.storage.counts.conditional_put
    # Not read by any claim yet: their cancels wait in the cursors, and no record is
    # written after them (which would add a commit of its own).
    outcomes = await queue.cancel(ids)
    assert [o.status for o in outcomes] == ["cancelled"] * 10
    assert queue.storage.counts.conditional_put - before == 2


async def test_cancel_answers_in_the_order_asked_once_per_id(queue: Queue) -> None:
    a, b = await queue.enqueue_many([{"n": 1}, {"n": 2}])
    outcomes = await queue.cancel([b, a, b])
    assert [o.id for o in outcomes] == [b, a, b]
    assert [o.status for o in outcomes] == ["cancelled"] * 3


async def test_ids_of_no_message_are_not_found(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    shard = layout.parse_message_id(mid).shard
    unknown = [f"{shard}-L0-999", f"{shard}-L999-0", "7-L0-0"]
    outcomes = await queue.cancel(unknown)
    assert [o.status for o in outcomes] == ["not_found"] * 3
    assert outcomes[0].detail == f"no message {shard}-L0-999 in queue 'jobs'"


async def test_a_malformed_id_raises_and_cancels_nothing(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    with pytest.raises(ConfigurationError, match="invalid message id"):
        await queue.cancel([mid, "bogus"])
    with pytest.raises(ConfigurationError, match="list of ids"):
        await queue.cancel(mid)
    assert (await queue.get(mid)).status == "pending"  # type: ignore[union-attr]


async def test_purge_drops_the_records_of_cancelled_messages(queue: Queue) -> None:
    mid = await queue.enqueue({"n": 1})
    await queue.cancel([mid])
    await queue.settle()
    await queue.purge()
    assert await queue.get(mid) is None
    assert (await queue.stats()).cancelled == 0


def test_the_blocking_client_cancels_too(tmp_path: Path) -> None:
    with connect(f"file://{tmp_path}", "jobs") as q:
        mid = q.enqueue({"n": 1})
        [outcome] = q.cancel([mid])
        assert isinstance(outcome, CancelOutcome)
        assert outcome.to_json() == {
            "id": mid,
            "status": "cancelled",
            "detail": "cancelled; it will not run",
            "finished_status": None,
        }
        assert q.get(mid).status == "cancelled"  # type: ignore[union-attr]


class Clock:
    """Store time that a test moves forward: delays fall due without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
async def timed(store_url: str) -> AsyncIterator[tuple[Queue, Clock]]:
    clock = Clock()
    q = await Queue.open(
        store_url, "timed", shards=2, clock=clock, backoff=Backoff(initial=0.01, max=0.05)
    )
    yield q, clock
    await q.close()


async def test_a_delayed_message_in_a_timer_bucket_is_cancelled_and_never_runs(
    timed: tuple[Queue, Clock],
) -> None:
    queue, clock = timed
    mid = await queue.enqueue({"n": 1}, delay=600)
    assert layout.parse_message_id(mid).segment.is_timer
    [outcome] = await queue.cancel([mid])
    assert outcome.status == "cancelled"
    stats = await queue.stats()
    assert (stats.delayed, stats.cancelled) == (0, 1)
    clock.offset += 700
    assert await queue.claim(10, 30) == []  # takes the bucket in, skips the message
    await queue.settle()
    cursor = await queue.committers[layout.parse_message_id(mid).shard].read()
    assert mid not in cursor.flights
    assert (await queue.get(mid)).status == "cancelled"  # type: ignore[union-attr]


# --- with a worker -----------------------------------------------------------------------


async def run_worker(worker: Worker, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``worker`` while ``body`` runs, then stop it (draining)."""
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(body(), 60)
    finally:
        await worker.stop()
        await task


def events(worker: Worker, *names: Any) -> list[WorkerEvent]:
    seen: list[WorkerEvent] = []
    for name in names:
        worker.on(name, seen.append)
    return seen


async def test_a_job_cancelled_before_it_started_never_runs(
    timed: tuple[Queue, Clock],
) -> None:
    queue, clock = timed
    ran: list[str] = []
    control_done = asyncio.Event()

    async def handler(payload: Any, ctx: JobContext) -> None:
        ran.append(ctx.message_id)

    worker = Worker(queue, handler, concurrency=4, polling=FAST)
    worker.on("completed", lambda e: control_done.set())

    async def trials() -> None:
        for _ in range(200):
            mid = await queue.enqueue("cancelled", delay=30)
            [outcome] = await queue.cancel([mid])
            assert outcome.status == "cancelled", outcome
        control = await queue.enqueue("control", delay=30)
        clock.offset += 60  # every one of them is due now
        await control_done.wait()
        stats = await queue.stats()
        assert (stats.pending, stats.delayed, stats.processing) == (0, 0, 0)
        assert stats.cancelled == 200
        ran.remove(control)

    await run_worker(worker, trials)
    assert ran == []


async def test_jobs_cancelled_before_the_worker_starts_never_run(queue: Queue) -> None:
    ids = await queue.enqueue_many(["cancelled"] * 100)
    assert {o.status for o in await queue.cancel(ids)} == {"cancelled"}
    controls = await queue.enqueue_many(["control"] * 20)
    ran: list[str] = []

    async def handler(payload: Any, ctx: JobContext) -> None:
        ran.append(payload)

    worker = Worker(queue, handler, concurrency=8, polling=FAST)
    await run_until(worker, "completed", count=len(controls))
    assert ran == ["control"] * 20
    stats = await queue.stats()
    assert (stats.pending, stats.processing, stats.completed, stats.cancelled) == (0, 0, 20, 100)


async def test_an_async_job_cancelled_while_it_runs_stops_and_ends_cancelled(
    queue: Queue,
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()
    caught: list[BaseException] = []

    async def handler(payload: Any, ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError as error:
            caught.append(error)
            raise

    worker = Worker(queue, handler, leases=Leases(visibility_timeout=0.6), polling=FAST)
    seen = events(worker, "cancelled", "completed", "retry", "dead", "lease_lost")
    worker.on("cancelled", lambda e: stopped.set())
    mid = await queue.enqueue({"n": 1})

    async def cancel_it() -> None:
        await started.wait()
        [outcome] = await queue.cancel([mid])
        assert outcome.status == "cancelling"
        await stopped.wait()

    await run_worker(worker, cancel_it)
    assert [(e.name, e.message_id) for e in seen] == [("cancelled", mid)]
    assert len(caught) == 1
    await queue.settle()
    info = await queue.get(mid)
    assert info is not None
    assert (info.status, info.errors) == ("cancelled", [])
    assert (await queue.stats()).cancelled == 1


async def test_a_sync_job_sees_ctx_cancelled_and_its_end_is_cancelled(queue: Queue) -> None:
    started = threading.Event()
    stopped = asyncio.Event()
    looked: list[bool] = []

    def handler(payload: Any, ctx: JobContext) -> str:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.005)  # a job's own work, between two looks
        looked.append(ctx.cancelled)
        return "stopped early"

    worker = Worker(queue, handler, leases=Leases(visibility_timeout=0.6), polling=FAST)
    seen = events(worker, "cancelled", "completed", "retry", "dead")
    worker.on("cancelled", lambda e: stopped.set())
    mid = await queue.enqueue({"n": 1})

    async def cancel_it() -> None:
        await asyncio.to_thread(started.wait)
        [outcome] = await queue.cancel([mid])
        assert outcome.status == "cancelling"
        await stopped.wait()

    await run_worker(worker, cancel_it)
    assert looked == [True]
    assert [e.name for e in seen] == ["cancelled"]
    await queue.settle()
    info = await queue.get(mid)
    assert info is not None
    assert (info.status, info.result) == ("cancelled", None)


async def test_a_sync_job_that_raises_when_cancelled_is_not_a_failure(queue: Queue) -> None:
    started = threading.Event()
    stopped = asyncio.Event()

    def handler(payload: Any, ctx: JobContext) -> None:
        started.set()
        while not ctx.cancelled:
            threading.Event().wait(0.005)
        raise RuntimeError("stopped: cancelled")

    worker = Worker(queue, handler, leases=Leases(visibility_timeout=0.6), polling=FAST)
    seen = events(worker, "cancelled", "retry", "dead")
    worker.on("cancelled", lambda e: stopped.set())
    mid = await queue.enqueue({"n": 1})

    async def cancel_it() -> None:
        await asyncio.to_thread(started.wait)
        await queue.cancel([mid])
        await stopped.wait()

    await run_worker(worker, cancel_it)
    assert [(e.name, e.error) for e in seen] == [("cancelled", "RuntimeError: stopped: cancelled")]
    await queue.settle()
    assert (await queue.get(mid)).status == "cancelled"  # type: ignore[union-attr]


async def test_a_worker_stopping_still_releases_its_jobs_rather_than_cancelling_them(
    queue: Queue,
) -> None:
    started = asyncio.Event()

    async def handler(payload: Any, ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = Worker(queue, handler, leases=Leases(shutdown_timeout=0.01), polling=FAST)
    seen = events(worker, "cancelled", "completed", "retry", "dead")
    mid = await queue.enqueue({"n": 1})
    task = asyncio.create_task(worker.run())
    await started.wait()
    await worker.stop()
    await task
    assert seen == []
    assert (await queue.get(mid)).status == "pending"  # type: ignore[union-attr]
