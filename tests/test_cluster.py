"""The cluster: shard ownership, heartbeats, the coordinator's lease, stealing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from typer.testing import CliRunner

from s3queue import Polling, Queue, Worker, WorkerEvent
from s3queue.core import layout, ownership, registry
from s3queue.core.registry import Election
from s3queue.errors import ConfigurationError
from s3queue.ops.cli import app
from s3queue.ops.monitor import WorkerMonitor
from s3queue.queue import Steal
from s3queue.storage.memory import MemoryStorage
from tests.conftest import count_backlog

# --- ownership ----------------------------------------------------------------------------

workers_ = st.lists(st.text("abcdef0123-", min_size=1, max_size=8), min_size=1, max_size=12)


@given(workers_, st.integers(1, 64))
def test_every_shard_has_exactly_one_owner_among_the_workers(
    workers: list[str], shards: int
) -> None:
    owners = ownership.owners("q", shards, workers)
    assert len(owners) == shards
    assert set(owners) <= set(workers)
    mine = [ownership.owned("q", shards, workers, w) for w in set(workers)]
    assert sorted(k for owned in mine for k in owned) == list(range(shards))


@given(workers_, st.integers(1, 64))
def test_every_worker_owns_its_fair_share(workers: list[str], shards: int) -> None:
    counts = Counter(ownership.owners("q", shards, workers))
    members = len(set(workers))
    loads = [counts.get(w, 0) for w in set(workers)]
    assert max(loads) - min(loads) <= 1
    assert max(loads) == -(-shards // members)


@given(workers_, st.integers(1, 64), st.data())
def test_the_full_order_and_the_shortcut_agree(
    workers: list[str], shards: int, data: st.DataObject
) -> None:
    top = data.draw(st.integers(1, 3))
    full = ownership.owners("q", shards, workers)
    ownership._owners.cache_clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ownership, "TOP", top)
        assert ownership.owners("q", shards, workers) == full
    ownership._owners.cache_clear()


@given(workers_, st.integers(1, 32), st.integers(1, 64))
def test_after_a_reshard_the_old_shards_keep_their_owners_and_the_new_are_shared(
    workers: list[str], before: int, added: int
) -> None:
    after = before + added
    grown = ownership.owners("q", after, workers, grown_from=before)
    assert grown[:before] == ownership.owners("q", before, workers)
    counts = Counter(grown[before:])
    members = len(set(workers))
    assert max(counts.values()) == -(-added // members)  # the new ones fairly too
    mine = [ownership.owned("q", after, workers, w, grown_from=before) for w in set(workers)]
    assert sorted(k for owned in mine for k in owned) == list(range(after))


def test_a_worker_leaving_moves_few_shards_besides_its_own() -> None:
    workers = [f"pod-{n}" for n in range(16)]
    before = ownership.owners("emails", 256, workers)
    for gone in workers:
        after = ownership.owners("emails", 256, [w for w in workers if w != gone])
        moved = sum(1 for k in range(256) if before[k] != gone and after[k] != before[k])
        assert moved <= 32, (gone, moved)  # its own 16, and at most twice that besides


def test_four_workers_on_four_shards_own_one_each() -> None:
    for n in range(50):
        workers = [f"host-{n}-{i}" for i in range(4)]
        assert sorted(Counter(ownership.owners("jobs", 4, workers)).values()) == [1, 1, 1, 1]


def test_a_worker_not_yet_listed_owns_its_share_at_once() -> None:
    listed = ["a", "b"]
    assert ownership.owned("q", 64, listed, "c") == ownership.owned("q", 64, [*listed, "c"], "c")


# --- the coordinator's lease ----------------------------------------------------------------


class Time:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def nobody() -> registry.Survey:
    return registry.Survey([])


def elections(storage: MemoryStorage, time: Time, *names: str) -> list[Election]:
    return [Election(storage, "q", n, time, ttl=30.0, skew_margin=2.0) for n in names]


async def test_one_worker_takes_the_lease_renews_it_and_the_next_takes_over_after_expiry() -> None:
    time = Time()
    storage = MemoryStorage("t", clock=time)
    a, b = elections(storage, time, "a", "b")
    record = await a.step(nobody)
    assert record is not None
    assert record.holder == "a"
    assert record.epoch == 1
    assert a.holds()
    await b.step(nobody)
    assert not b.holds()
    assert b.record is not None
    assert b.record.holder == "a"
    time.now += 20
    await a.step(nobody)  # renewed: the lease runs 30 s from now
    time.now += 25
    await b.step(nobody)
    assert not b.holds(), "renewed 25 s ago: still a's"
    time.now += 30  # a stopped renewing: expired, and past the skew margin
    assert not a.holds()
    await b.step(nobody)
    assert b.holds()
    assert b.epoch == 2
    await a.step(nobody)  # a comes back: it reads b's lease, and does not act
    assert not a.holds()
    assert a.epoch is None


async def test_the_coordinator_forgets_heartbeats_long_dead_and_keeps_the_recently_dead() -> None:
    time = Time()
    storage = MemoryStorage("t", clock=time)
    await storage.put(layout.worker_key("q", "killed-long-ago"), b"{}")
    time.now += 3000
    await storage.put(layout.worker_key("q", "killed-lately"), b"{}")
    time.now += 1000
    await storage.put(layout.worker_key("q", "alive"), b"{}")
    listed = sorted(e.key for e in await storage.list(layout.workers_prefix("q")))
    assert await registry.live(storage, "q", time.now, 30.0) == ["alive"]
    assert sorted(e.key for e in await storage.list("q/workers/")) == listed, "only with forget"
    assert await registry.live(storage, "q", time.now, 30.0, forget=True) == ["alive"]
    assert sorted(e.key for e in await storage.list("q/workers/")) == [
        "q/workers/alive",
        "q/workers/killed-lately",
    ]


async def test_a_deposed_holder_cannot_renew_its_write_fails_its_cas() -> None:
    time = Time()
    storage = MemoryStorage("t", clock=time)
    a, b = elections(storage, time, "a", "b")
    await a.step(nobody)
    time.now += 40
    await b.step(nobody)  # a's lease ran out: b takes it, epoch 2
    assert b.holds()
    # a renews from its old read, as a process paused since would: refused.
    record, _etag = await registry.read_cluster(storage, "q")
    assert record is not None
    stale = await a._write(record, "not-the-etag", 1, nobody)
    assert not a.holds()
    assert stale is not None
    assert stale.holder == "b"


async def test_a_released_lease_is_taken_at_once() -> None:
    time = Time()
    storage = MemoryStorage("t", clock=time)
    a, b = elections(storage, time, "a", "b")
    await a.step(nobody)
    await a.release()
    assert not a.holds()
    await b.step(nobody)
    assert b.holds()
    assert b.epoch == 2


async def test_a_lost_answer_to_its_own_write_is_recognised_at_the_next_read() -> None:
    time = Time()
    storage = MemoryStorage("t", clock=time)
    [a] = elections(storage, time, "a")
    await a.step(nobody)
    a.epoch = None  # as if the write's answer had been lost after it landed
    await a.step(nobody)
    assert a.holds()
    assert a.epoch == 1


class ElectionModel(RuleBasedStateMachine):
    """Any interleaving of steps, releases, pauses and clock moves: never two holders
    at once by their own clocks (each within the skew margin of the store's), and
    epochs only go up."""

    def __init__(self) -> None:
        super().__init__()
        self.time = Time()
        self.storage = MemoryStorage("t", clock=self.time)
        self.skews = [0.0, 0.9, -0.9]
        self.clocks = [self._skewed(s) for s in self.skews]
        self.elections = [
            Election(self.storage, "q", f"w{n}", clock, ttl=10.0, skew_margin=2.0)
            for n, clock in enumerate(self.clocks)
        ]
        self.epoch = 0

    def _skewed(self, skew: float) -> Time:
        outer = self

        class Skewed(Time):
            def __call__(self) -> float:
                return outer.time.now + skew

        return Skewed()

    @rule(who=st.integers(0, 2))
    def step(self, who: int) -> None:
        asyncio.run(self.elections[who].step(nobody))

    @rule(who=st.integers(0, 2))
    def release(self, who: int) -> None:
        asyncio.run(self.elections[who].release())

    @rule(seconds=st.floats(0.0, 15.0))
    def wait(self, seconds: float) -> None:
        self.time.now += seconds

    @precondition(lambda self: True)
    @invariant()
    def one_holder_and_rising_epochs(self) -> None:
        holders = [e for e in self.elections if e.holds()]
        assert len(holders) <= 1, [e.worker_id for e in holders]
        record = self.elections[0].record
        stored = asyncio.run(registry.read_cluster(self.storage, "q"))[0]
        if stored is not None:
            assert stored.epoch >= self.epoch
            self.epoch = stored.epoch
        del record


TestElectionModel = ElectionModel.TestCase
TestElectionModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# --- workers in a cluster ---------------------------------------------------------------------

CLUSTER = Polling(poll_interval=0.01, heartbeat_interval=1.0)


async def test_workers_split_the_shards_and_one_coordinates(tmp_path: object) -> None:
    url = "memory://cluster-split"
    queues = [await Queue.open(url, "jobs", shards=8) for _ in range(3)]
    workers = [
        Worker(q, lambda p, ctx: None, polling=CLUSTER, worker_id=f"w{n}")
        for n, q in enumerate(queues)
    ]
    for w in workers:  # each writes its heartbeat; the first takes the lease
        await w.cluster.step()
    for w in workers:  # each reads the snapshot the coordinator wrote
        await w.cluster.step()
    await workers[0].cluster.step()  # the coordinator lists all three now
    for w in workers:
        await w.cluster.step()
    owned = [q.owned for q in queues]
    assert all(o is not None for o in owned)
    assert sorted(k for o in owned if o for k in o) == list(range(8))
    assert [w.cluster.coordinates("jobs") for w in workers] == [True, False, False]
    assert {w.cluster.workers for w in workers} == {3}
    members = await registry.members(queues[0].storage, "jobs")
    assert sorted(m.beat.id for m in members if m.beat) == ["w0", "w1", "w2"]
    for q in queues:
        await q.close()


async def test_the_coordinator_stopping_hands_over_and_events_say_so() -> None:
    url = "memory://cluster-handover"
    qa = await Queue.open(url, "jobs", shards=4)
    qb = await Queue.open(url, "jobs")
    a = Worker(qa, lambda p, ctx: None, polling=CLUSTER, worker_id="a")
    b = Worker(qb, lambda p, ctx: None, polling=CLUSTER, worker_id="b")
    promoted: list[WorkerEvent] = []
    demoted: list[WorkerEvent] = []
    a.on("coordinator_demoted", demoted.append)
    b.on("coordinator_promoted", promoted.append)
    a.on("coordinator_promoted", promoted.append)
    took = asyncio.Event()
    a.on("coordinator_promoted", lambda e: took.set())
    task = asyncio.create_task(a.run())
    await took.wait()
    await b.cluster.step()
    assert not b.cluster.coordinates("jobs")
    await a.stop()
    await task
    assert [e.worker_id for e in demoted] == ["a"]
    await b.cluster.step()  # a released the lease when it stopped: b takes it at once
    assert b.cluster.coordinates("jobs")
    assert [(e.worker_id, e.epoch, e.queue) for e in promoted] == [
        ("a", 1, "jobs"),
        ("b", 2, "jobs"),
    ]
    # a's heartbeat is gone: it left
    assert await registry.live(qb.storage, "jobs", qb.clock(), 300.0) == ["b"]
    await qa.close()
    await qb.close()


async def test_a_worker_steals_only_what_waits_and_only_when_asked() -> None:
    url = "memory://cluster-steal"
    producer = await Queue.open(url, "jobs", shards=2)
    thief = await Queue.open(url, "jobs")
    thief.own(frozenset({0}))
    mid = await producer.enqueue({"n": 1})
    shard = layout.parse_message_id(mid).shard
    thief.own(frozenset({1 - shard}))
    assert await thief.claim(10, 30.0) == []  # not its shard: it keeps to its own
    got = await thief.claim_round(10, 30.0, steal=Steal(waited=0.0, quiet=60.0))
    assert [lease.id for lease in got.leases] == [mid]
    assert got.stolen
    await producer.close()
    await thief.close()


async def test_a_busy_owner_keeps_fresh_work_to_itself() -> None:
    url = "memory://cluster-fresh"
    owner = await Queue.open(url, "jobs", shards=1)
    thief = await Queue.open(url, "jobs")
    thief.own(frozenset())
    await owner.enqueue({"n": 0})
    assert len(await owner.claim(1, 30.0)) == 1  # the owner writes the cursor now
    await owner.enqueue({"n": 1})
    got = await thief.claim_round(10, 30.0, steal=Steal(waited=60.0, quiet=60.0))
    assert got.leases == [], "enqueued just now, in a shard its owner just wrote"
    await owner.close()
    await thief.close()


def test_a_worker_id_that_cannot_name_an_object_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="invalid worker id"):
        layout.check_worker_id("a/b")


async def test_idle_workers_share_the_polling() -> None:
    q = await Queue.open("memory://cluster-idle", "jobs", shards=16)
    w = Worker(q, lambda p, ctx: None, polling=Polling(poll_interval=1.0, max_poll_interval=10.0))
    assert w.cluster.idle_interval() == 1.0  # alone: every poll interval
    w.cluster.seats["jobs"].workers = [f"w{n}" for n in range(100)]
    # 100 workers, 16 shards: 1.6 reads a second in all, each worker every 62.5 s
    assert w.cluster.idle_interval() == pytest.approx(101 / 1.6)
    await q.close()


async def test_metrics_and_the_cluster_endpoint_tell_workers_and_coordinator() -> None:
    q = await Queue.open("memory://cluster-metrics", "jobs", shards=2)
    await q.enqueue_many([{"n": n} for n in range(3)])
    w = Worker(q, lambda p, ctx: None, polling=CLUSTER, worker_id="solo")
    monitor = WorkerMonitor(w)
    assert monitor.cluster_view()["backlog"] is None  # not counted yet: no number
    await w.cluster.step()  # elected: it counts an interval later
    assert monitor.cluster_view()["backlog"] is None
    await count_backlog(w, "jobs")
    from prometheus_client import generate_latest

    text = generate_latest(monitor.registry).decode()
    assert 's3queue_cluster_workers{queue="jobs"} 1.0' in text
    assert 's3queue_is_coordinator{queue="jobs"} 1.0' in text
    assert 's3queue_queue_pending{queue="jobs"} 3.0' in text
    view = monitor.cluster_view()
    assert view["coordinator"] == "solo"
    assert view["backlog"] == 3
    assert view["epoch"] == 1
    await q.close()


def test_workers_command_lists_heartbeats_and_the_coordinator(tmp_path: object) -> None:
    url = f"file://{tmp_path}/store"

    async def start() -> None:
        q = await Queue.open(url, "jobs", shards=2)
        w = Worker(q, lambda p, ctx: None, polling=CLUSTER, worker_id="pod-1")
        await w.cluster.step()
        await q.close()

    asyncio.run(start())
    result = CliRunner().invoke(app, ["--url", url, "workers", "jobs", "--json"])
    assert result.exit_code == 0, result.output
    [view] = json.loads(result.stdout)
    [row] = view["workers"]
    assert row["id"] == "pod-1"
    assert row["alive"] is True
    assert row["concurrency"] == 10
    assert view["coordinator"]["id"] == "pod-1"
    assert view["coordinator"]["epoch"] == 1
    text = CliRunner().invoke(app, ["--url", url, "workers"], terminal_width=200).output
    assert "pod-1" in text
    assert "coordinator: pod-1 (epoch 1" in text
