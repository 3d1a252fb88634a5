"""The life cycle of a message, checked against a simple model by hypothesis.

Random sequences of enqueue, claim, ack, fail, extend, release, cancel, sweeper
passes (collection) and the passing of time run against a real queue (memory and
local-directory backends) and against a model of a few dictionaries; after every
step both must agree on every message's status, attempts and errors, and no message
may ever be held by two live leases. A message a cancel accepted never completes,
and one that completed is never reported cancelled. A sweeper pass never touches a
live message (every later claim still agrees with the model), and a message reads
"expired" only once it finished at least the queue's result_ttl ago, and never
anything else afterwards.

A second machine races cancellation against the lease life cycle on the pure cursor,
with finalization as a step of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from s3queue import Backoff, LeaseLost, Queue, Retention
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
    Release,
    Result,
    Rules,
    Stale,
    apply,
    is_ahead,
)
from s3queue.core.layout import SegmentRef
from s3queue.core.records import ErrorRecord
from s3queue.core.segment import Message, Segment
from s3queue.info import Failure, Lease

MARGIN = 2.0
TTL = 20.0
FINAL = ("completed", "dead", "cancelled")


@dataclass
class Model:
    status: str
    visible_at: float
    priority: int
    order: tuple[int, int]
    attempts: int = 0
    errors: int = 0
    max_attempts: int = 3
    lease: Lease | None = None
    result: Any = None
    cancel_requested: bool = False


@dataclass
class Held:
    lease: Lease
    expires_at: float


@dataclass
class World:
    now: float = 1_800_000_000.0
    messages: dict[str, Model] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)
    #: Messages a cancel answered "cancelled" or "cancelling" for, and messages acked
    #: as completed.
    cancelled: set[str] = field(default_factory=set)
    completed: set[str] = field(default_factory=set)
    #: When each message was first seen finished, and those read as expired.
    finished_at: dict[str, float] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)


def order_of(mid: str) -> tuple[int, int]:
    _, segment, index = mid.split("-")
    return int(segment[1:]), int(index)


class MessageLifeCycle(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.tmp: str | None = None

    def run(self, coroutine: Any) -> Any:
        result = self.loop.run_until_complete(coroutine)
        # Side records of finished messages are written, and finalized by another
        # commit, in the background; let that happen now, at this step's time, since
        # any commit also recovers expired leases.
        queue: Queue | None = getattr(self, "queue", None)
        if queue is not None:
            self.loop.run_until_complete(queue.settle())
        return result

    @initialize()
    def open_queue(self) -> None:
        if self.backend == "file":
            self.tmp = tempfile.mkdtemp(prefix="s3queue-model-")
            url = f"file://{self.tmp}"
        else:
            url = f"memory://model-{uuid.uuid4().hex}"
        self.queue: Queue = self.run(
            Queue.open(
                url,
                "model",
                shards=1,
                clock=lambda: self.world.now,
                skew_margin=MARGIN,
                backoff=Backoff(initial=1, factor=2, max=8, jitter=False),
                verify_store=False,
                retention=Retention(result_ttl=TTL, dead_ttl=TTL),
            )
        )

    def teardown(self) -> None:
        if hasattr(self, "queue"):
            self.run(self.queue.close())
        self.loop.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the model's own rules -------------------------------------------------------------

    def recover(self) -> None:
        """What any commit does first: take back leases past expiry + margin."""
        for m in self.world.messages.values():
            if (
                m.status == "processing"
                and m.lease
                and m.lease.expires_at + MARGIN <= self.world.now
            ):
                m.errors += 1
                m.lease = None
                if m.cancel_requested:
                    m.status = "cancelled"  # never retried once cancelled
                elif m.attempts >= m.max_attempts:
                    m.status = "dead"
                else:
                    m.status, m.visible_at = "pending", self.world.now

    def alive(self, held: Held) -> bool:
        m = self.world.messages[held.lease.id]
        return (
            m.status == "processing"
            and m.lease is not None
            and m.lease.token == held.lease.token
            and self.world.now < m.lease.expires_at
        )

    # --- rules ---------------------------------------------------------------------------------

    @rule(priority=st.integers(0, 2), delay=st.sampled_from([0.0, 0.0, 3.0]))
    def enqueue(self, priority: int, delay: float) -> None:
        mid = self.run(self.queue.enqueue({"p": priority}, priority=priority, delay=delay))
        self.world.messages[mid] = Model(
            status="delayed" if delay else "pending",
            visible_at=self.world.now + delay,
            priority=priority,
            order=order_of(mid),
        )

    @rule(count=st.integers(1, 4))
    def enqueue_many(self, count: int) -> None:
        ids = self.run(self.queue.enqueue_many([{"n": n} for n in range(count)]))
        for mid in ids:
            self.world.messages[mid] = Model("pending", self.world.now, 0, order_of(mid))

    @rule(n=st.integers(1, 4), vt=st.sampled_from([5.0, 10.0, 20.0]))
    def claim(self, n: int, vt: float) -> None:
        self.recover()
        claimable = sorted(
            (
                (-m.priority, m.order, mid)
                for mid, m in self.world.messages.items()
                if m.status in ("pending", "delayed") and m.visible_at <= self.world.now
            ),
        )
        expected = [mid for *_, mid in claimable[:n]]
        leases = self.run(self.queue.claim(n, vt))
        assert [lease.id for lease in leases] == expected
        for lease in leases:
            m = self.world.messages[lease.id]
            assert all(not self.alive(h) for h in self.world.held if h.lease.id == lease.id)
            m.status, m.lease = "processing", lease
            m.attempts += 1
            assert lease.attempt == m.attempts
            assert lease.expires_at == self.world.now + vt
            self.world.held.append(Held(lease, lease.expires_at))

    def pick(self, data: st.DataObject) -> Held:
        return data.draw(st.sampled_from(self.world.held))

    @precondition(lambda self: self.world.held)
    @rule(data=st.data(), result=st.sampled_from([None, 7, "done"]))
    def ack(self, data: st.DataObject, result: Any) -> None:
        held = self.pick(data)
        self.recover()
        if self.alive(held):
            self.run(self.queue.ack(held.lease, result=result))
            m = self.world.messages[held.lease.id]
            if m.cancel_requested:
                assert held.lease.cancel_requested
                m.status, m.lease = "cancelled", None
            else:
                m.status, m.lease, m.result = "completed", None, result
                self.world.completed.add(held.lease.id)
        else:
            with pytest.raises(LeaseLost):
                self.run(self.queue.ack(held.lease, result=result))
        self.world.held.remove(held)

    @precondition(lambda self: self.world.held)
    @rule(data=st.data(), retriable=st.booleans())
    def fail(self, data: st.DataObject, retriable: bool) -> None:
        held = self.pick(data)
        self.recover()
        if not self.alive(held):
            with pytest.raises(LeaseLost):
                self.run(self.queue.fail(held.lease, "boom", retriable=retriable))
            self.world.held.remove(held)
            return
        failure = self.run(self.queue.fail(held.lease, "boom", retriable=retriable))
        m = self.world.messages[held.lease.id]
        m.errors += 1
        m.lease = None
        if m.cancel_requested:
            assert failure.status == "cancelled"
            m.status = "cancelled"
        elif not retriable or m.attempts >= m.max_attempts:
            assert failure.status == "dead"
            m.status = "dead"
        else:
            assert failure.status == "retry"
            m.status = "delayed"
            m.visible_at = self.world.now + min(8, 2 ** (m.attempts - 1))
            assert failure.visible_at == m.visible_at
        self.world.held.remove(held)

    @precondition(lambda self: self.world.held)
    @rule(data=st.data(), seconds=st.sampled_from([5.0, 15.0]))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        held = self.pick(data)
        self.recover()
        if not self.alive(held):
            with pytest.raises(LeaseLost):
                self.run(self.queue.extend(held.lease, seconds))
            self.world.held.remove(held)
            return
        m = self.world.messages[held.lease.id]
        assert m.lease is not None
        expires = self.run(self.queue.extend(held.lease, seconds))
        assert expires == max(m.lease.expires_at, self.world.now + seconds)
        assert held.lease.cancel_requested == m.cancel_requested  # the extend tells
        m.lease.expires_at = expires

    @precondition(lambda self: self.world.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        held = self.pick(data)
        self.recover()
        if not self.alive(held):
            with pytest.raises(LeaseLost):
                self.run(self.queue.release(held.lease))
        else:
            self.run(self.queue.release(held.lease))
            m = self.world.messages[held.lease.id]
            if m.cancel_requested:
                m.status, m.lease = "cancelled", None  # given back, but cancelled
            else:
                m.status, m.lease, m.visible_at = "pending", None, self.world.now
                m.attempts -= 1
        self.world.held.remove(held)

    @precondition(lambda self: self.world.messages)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(sorted(self.world.messages)))
        self.recover()
        m = self.world.messages[mid]
        [outcome] = self.run(self.queue.cancel([mid]))
        if m.status in ("pending", "delayed"):
            assert outcome.status == "cancelled", (mid, outcome, m)
            m.status = "cancelled"
        elif m.status == "processing":
            assert outcome.status == "cancelling", (mid, outcome, m)
            m.cancel_requested = True
        elif outcome.finished_status == "expired":
            assert outcome.status == "finished"
            assert self.world.finished_at[mid] + TTL <= self.world.now, (mid, outcome, m)
        else:
            assert (outcome.status, outcome.finished_status) == ("finished", m.status)
        if outcome.status in ("cancelled", "cancelling"):
            self.world.cancelled.add(mid)

    @rule(seconds=st.sampled_from([0.5, 1.0, 1.5, 3.0, 5.0, 7.0, 12.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.world.now += seconds
        for m in self.world.messages.values():
            if m.status == "delayed" and m.visible_at <= self.world.now:
                m.status = "pending"

    @rule()
    def sweep(self) -> None:
        """A collection pass (the clock is far ahead of the store's, so every object
        is old enough by its listing: only the retention watermarks decide)."""
        report = self.run(self.queue.collect())
        assert report.held_by is None

    @rule()
    def advance_past_the_ttl(self) -> None:
        self.advance(TTL + 1.0)

    @precondition(lambda self: self.world.held)
    @rule(data=st.data(), offset=st.sampled_from([-0.5, 0.0, 1.0, MARGIN, MARGIN + 0.5]))
    def advance_to_a_lease_edge(self, data: st.DataObject, offset: float) -> None:
        """Time jumps to just around a lease's expiry, where fencing decides."""
        held = self.pick(data)
        target = held.lease.expires_at + offset
        if target > self.world.now:
            self.advance(target - self.world.now)

    # --- what must always hold ------------------------------------------------------------------

    @invariant()
    def every_message_agrees_with_the_model(self) -> None:
        if not hasattr(self, "queue"):
            return
        for mid, m in self.world.messages.items():
            info = self.run(self.queue.get(mid))
            assert info is not None
            if m.status in FINAL:
                self.world.finished_at.setdefault(mid, self.world.now)
            if info.status == "expired" or mid in self.world.expired:
                assert info.status == "expired", (mid, info, m)  # and stays so
                assert m.status in FINAL, (mid, info, m)
                assert self.world.finished_at[mid] + TTL <= self.world.now, (mid, info, m)
                self.world.expired.add(mid)
                continue
            expected = m.status
            if expected in ("pending", "delayed"):
                expected = "delayed" if m.visible_at > self.world.now else "pending"
            assert info.status == expected, (mid, info, m)
            if m.status != "pending" or m.attempts:
                assert info.attempts == m.attempts, (mid, info, m)
            assert len(info.errors) == m.errors, (mid, info, m)
            if m.status == "completed":
                assert info.result == m.result
            if m.status == "processing":
                assert info.cancel_requested == m.cancel_requested
            if m.status == "cancelled":
                assert info.result is None

    @invariant()
    def a_cancelled_message_never_completes_and_a_completed_one_is_never_cancelled(
        self,
    ) -> None:
        if not hasattr(self, "queue"):
            return
        assert not self.world.cancelled & self.world.completed
        for mid in self.world.cancelled | self.world.completed:
            info = self.run(self.queue.get(mid))
            assert info is not None
            assert info.status != ("cancelled" if mid in self.world.completed else "completed")
            # Expiry is checked by every_message_agrees_with_the_model.

    @invariant()
    def counts_agree_with_the_model(self) -> None:
        if not hasattr(self, "queue"):
            return
        stats = self.run(self.queue.stats())
        by_status: dict[str, int] = {}
        for m in self.world.messages.values():
            by_status[m.status] = by_status.get(m.status, 0) + 1
        assert stats.processing == by_status.get("processing", 0)
        assert stats.completed == by_status.get("completed", 0)
        assert stats.cancelled == by_status.get("cancelled", 0)
        active = sum(by_status.get(s, 0) for s in ("pending", "delayed", "processing"))
        assert stats.pending + stats.delayed + stats.processing == active

    @invariant()
    def no_message_has_two_live_leases(self) -> None:
        live = [h.lease.id for h in self.world.held if self.alive(h)]
        assert len(live) == len(set(live))


class FileLifeCycle(MessageLifeCycle):
    backend = "file"


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

TestLifeCycleOnMemory = MessageLifeCycle.TestCase
TestLifeCycleOnMemory.settings = SETTINGS
TestLifeCycleOnFile = FileLifeCycle.TestCase
TestLifeCycleOnFile.settings = settings(SETTINGS, max_examples=15)


# --- cancellation racing the lease life cycle, on the pure cursor -------------------------
#
# Finalize is a step of its own here (the queue above runs it at once, after every
# step), so a cancel can fall between a message's finish and its finalization, and a
# message cancelled before its segment was read can meet a stray Finalize.


@dataclass
class Races:
    now: float = 1_800_000_000.0
    cursor: Cursor = field(default_factory=lambda: Cursor(shard=0))
    segments: dict[str, Segment] = field(default_factory=dict)
    held: list[Claimed] = field(default_factory=list)
    #: Finished in a commit, record not yet written and finalized.
    finishing: list[str] = field(default_factory=list)
    #: Messages a Cancel answered "cancelled" or "cancelling" for.
    cancelled: set[str] = field(default_factory=set)
    #: Messages an Ack completed (answered None).
    completed: set[str] = field(default_factory=set)
    #: Messages a Fail or a lease's recovery made dead.
    dead: set[str] = field(default_factory=set)


class CancelRaces(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.r = Races()
        self.tokens = itertools.count()

    def apply(self, *ops: Operation) -> list[Result]:
        t = apply(
            self.r.cursor,
            list(ops),
            self.r.segments,
            now=self.r.now,
            commit="c",
            new_token=lambda: f"t{next(self.tokens)}",
            rules=Rules(skew_margin=MARGIN),
        )
        self.r.cursor = t.cursor
        self.r.finishing += t.finishing
        for recovered in t.recovered:
            if recovered.dead:
                self.r.dead.add(recovered.id)
            assert not (recovered.dead and recovered.id in self.r.cancelled)
        return t.results

    def ids(self) -> list[str]:
        written = [
            f"0-{ref}-{i}"
            for ref, segment in sorted(self.r.segments.items())
            for i in range(len(segment.messages))
        ]
        return [*written, "0-L0-7", "0-L9-0"]  # and two that name no message

    # --- rules -------------------------------------------------------------------------

    @rule(count=st.integers(1, 3), attempts=st.integers(1, 3))
    def write(self, count: int, attempts: int) -> None:
        """A producer writes the next log segment; nobody has read it yet."""
        seq = sum(1 for ref in self.r.segments if ref.startswith("L"))
        message = Message(
            payload=msgspec.Raw(b"1"), enqueued_at=1.0, visible_at=0.0, max_attempts=attempts
        )
        self.r.segments[f"L{seq}"] = Segment(writer="w", created_at=1.0, messages=[message] * count)

    @rule()
    def ingest(self) -> None:
        ref = SegmentRef.log(self.r.cursor.next_seq)
        segment = self.r.segments.get(str(ref))
        if segment is not None:
            assert self.apply(Ingest(ref, len(segment.messages))) == [True]

    @rule(n=st.integers(1, 3), vt=st.sampled_from([5.0, 10.0]))
    def claim(self, n: int, vt: float) -> None:
        [claimed] = self.apply(Claim("w", n, vt))
        assert isinstance(claimed, list)
        for lease in claimed:
            assert lease.id not in self.r.cancelled, "a cancelled message was claimed"
            assert lease.id not in self.r.completed | self.r.dead
        self.r.held += claimed

    @precondition(lambda self: self.r.held)
    @rule(data=st.data(), end=st.sampled_from(["ack", "fail", "retry", "release", "extend"]))
    def holder(self, data: st.DataObject, end: str) -> None:
        lease = data.draw(st.sampled_from(self.r.held))
        ops: dict[str, Operation] = {
            "ack": Ack(lease.id, lease.token),
            "fail": Fail(lease.id, lease.token, ERROR, retriable=False, delay=0.0),
            "retry": Fail(lease.id, lease.token, ERROR, retriable=True, delay=3.0),
            "release": Release(lease.id, lease.token),
            "extend": Extend(lease.id, lease.token, 10.0),
        }
        [result] = self.apply(ops[end])
        if isinstance(result, Stale):
            self.r.held.remove(lease)
            return
        was_cancelled = lease.id in self.r.cancelled
        if isinstance(result, Extended):
            assert result.cancelled == was_cancelled
            return
        self.r.held.remove(lease)
        # Once cancelled, however the lease ends, the message ends cancelled.
        assert (result is CANCELLED) == was_cancelled, (end, result)
        if end == "ack" and result is None:
            self.r.completed.add(lease.id)
        if isinstance(result, Failure) and result.status == "dead":
            self.r.dead.add(lease.id)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.ids()))
        [result] = self.apply(Cancel(mid))
        assert isinstance(result, Cancellation)
        if result.status in ("cancelled", "cancelling"):
            assert mid not in self.r.completed | self.r.dead, "a finished message was cancelled"
            self.r.cancelled.add(mid)
        elif result.status == "finished":
            # How it ended, when the cursor still knows, is how it did end. When it
            # does not (the segment is behind the window), Queue.cancel reads the
            # records, which also tell an id that never named a message.
            ended = {"completed": self.r.completed, "dead": self.r.dead}
            if result.finished is not None:
                assert mid in ended.get(result.finished, self.r.cancelled)
            elif mid in self.ids()[:-2]:
                assert mid in self.r.completed | self.r.dead | self.r.cancelled
        else:
            assert mid not in self.r.cancelled

    @precondition(lambda self: self.r.finishing)
    @rule(data=st.data())
    def finalize(self, data: st.DataObject) -> None:
        """The records of some finished messages are written: finalize them."""
        done = data.draw(st.lists(st.sampled_from(self.r.finishing), unique=True, min_size=1))
        self.r.finishing = [m for m in self.r.finishing if m not in done]
        self.apply(Finalize(tuple(done)))

    @rule(data=st.data())
    def stray_finalize(self, data: st.DataObject) -> None:
        """A Finalize for any message (a late or repeated one) must not undo anything."""
        self.apply(Finalize((data.draw(st.sampled_from(self.ids())),)))

    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0, 13.0]))
    def advance(self, seconds: float) -> None:
        self.r.now += seconds

    # --- what must always hold ----------------------------------------------------------

    @invariant()
    def a_cancelled_message_never_completes_and_a_completed_one_is_never_cancelled(
        self,
    ) -> None:
        assert not self.r.cancelled & self.r.completed
        assert not self.r.cancelled & self.r.dead
        for mid, flight in self.r.cursor.flights.items():
            if flight.outcome is not None:
                assert (flight.outcome.status == "cancelled") == (mid in self.r.cancelled)

    @invariant()
    def a_cancelled_message_ahead_of_the_window_keeps_its_flight(self) -> None:
        for mid in self.r.cancelled:
            if is_ahead(self.r.cursor, layout.parse_message_id(mid).segment):
                outcome = self.r.cursor.flights[mid].outcome
                assert outcome is not None
                assert outcome.status == "cancelled"


ERROR = ErrorRecord(attempt=1, at=1.0, type="ValueError", message="boom")

TestCancelRaces = CancelRaces.TestCase
TestCancelRaces.settings = settings(
    max_examples=400, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
