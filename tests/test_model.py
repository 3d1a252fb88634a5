"""The life cycle of a message, checked against a simple model by hypothesis.

Random sequences of enqueue, claim, ack, fail, extend, release and the passing of
time run against a real queue (memory and local-directory backends) and against a
model of a few dictionaries; after every step both must agree on every message's
status, attempts and errors, and no message may ever be held by two live leases.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

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

from s3queue import Backoff, LeaseLost, Queue
from s3queue.info import Lease

MARGIN = 2.0


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


@dataclass
class Held:
    lease: Lease
    expires_at: float


@dataclass
class World:
    now: float = 1_800_000_000.0
    messages: dict[str, Model] = field(default_factory=dict)
    held: list[Held] = field(default_factory=list)


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
                if m.attempts >= m.max_attempts:
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
            m.status, m.lease, m.result = "completed", None, result
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
        if not retriable or m.attempts >= m.max_attempts:
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
            m.status, m.lease, m.visible_at = "pending", None, self.world.now
            m.attempts -= 1
        self.world.held.remove(held)

    @rule(seconds=st.sampled_from([0.5, 1.0, 1.5, 3.0, 5.0, 7.0, 12.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.world.now += seconds
        for m in self.world.messages.values():
            if m.status == "delayed" and m.visible_at <= self.world.now:
                m.status = "pending"

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
            expected = m.status
            if expected in ("pending", "delayed"):
                expected = "delayed" if m.visible_at > self.world.now else "pending"
            assert info.status == expected, (mid, info, m)
            if m.status != "pending" or m.attempts:
                assert info.attempts == m.attempts, (mid, info, m)
            assert len(info.errors) == m.errors, (mid, info, m)
            if m.status == "completed":
                assert info.result == m.result

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
