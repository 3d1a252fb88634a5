"""Resharding: a queue grows to more shards while producers and workers run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from typer.testing import CliRunner

from s3queue import JobContext, Polling, Queue, Worker
from s3queue.core import layout, registry
from s3queue.core.registry import Election
from s3queue.errors import ConfigurationError
from s3queue.ops.cli import app, exit_code


class Shifted:
    """The wall clock moved on by ``ahead`` seconds: every process of a test shares
    it, so moving it past a reshard's notice moves all of them at once."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


def shard(message_id: str) -> int:
    return layout.parse_message_id(message_id).shard


async def test_producers_write_to_new_shards_only_after_the_notice() -> None:
    clock = Shifted()
    q = await Queue.open("memory://reshard-notice", "jobs", shards=2, clock=clock)
    settings = await q.reshard(8)
    # No worker has run in a cluster here: the notice is the skew margin alone.
    assert settings.grown_from == 2
    assert settings.grown_at == pytest.approx(clock() + q.context.rules.skew_margin, abs=1.0)
    before = await enqueue_in_turns(q, 16)
    assert {shard(m) for m in before} == {0, 1}
    clock.ahead = 10.0
    after = await enqueue_in_turns(q, 16)
    assert {shard(m) for m in after} == set(range(8))  # in turn: each shard twice
    stats = await q.stats()
    assert stats.pending == 160
    assert len(stats.shards) == 8
    assert sum(s.pending for s in stats.shards) == 160
    await q.close()


@contextlib.asynccontextmanager
async def grown(url: str, before: int, after: int) -> AsyncIterator[tuple[Queue, Queue]]:
    """A process that opened the queue with ``before`` shards, and another that then
    grew it to ``after``; the notice has run out."""
    clock = Shifted()
    old = await Queue.open(url, "jobs", shards=before, clock=clock)
    new = await Queue.open(url, "jobs", clock=clock)
    await new.reshard(after)
    clock.ahead = 10.0
    try:
        yield old, new
    finally:
        await old.close()
        await new.close()


async def enqueue_in_turns(q: Queue, times: int) -> list[str]:
    """Five messages a write, ``times`` writes (each to the next shard in turn)."""
    return [m for _ in range(times) for m in await q.enqueue_many(range(5))]


async def test_a_process_that_opened_the_queue_before_learns_the_new_shards() -> None:
    async with grown("memory://reshard-stale", 2, 6) as (old, new):
        ids = await enqueue_in_turns(new, 12)
        far = next(m for m in ids if shard(m) >= 2)
        assert old.settings.shards == 2
        info = await old.get(far)  # an id on a shard it did not know: it reads queue.json
        assert info is not None
        assert info.status == "pending"
        assert old.settings.shards == 6
        assert not await old.reload()  # nothing newer since
        claimed = await old.claim(max_messages=100)
        assert sorted(m.id for m in claimed) == sorted(ids)


async def test_a_producer_rereads_the_settings_when_they_are_old(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with grown("memory://reshard-producer", 1, 4) as (producer, _):
        assert {shard(m) for m in await enqueue_in_turns(producer, 8)} == {0}
        monkeypatch.setattr(Queue, "SETTINGS_INTERVAL", 0.0)
        assert {shard(m) for m in await enqueue_in_turns(producer, 8)} == set(range(4))


async def test_a_long_lived_reader_counts_the_new_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    async with grown("memory://reshard-reader", 2, 4) as (reader, admin):
        ids = await enqueue_in_turns(admin, 8)
        monkeypatch.setattr(Queue, "SETTINGS_INTERVAL", 0.0)
        stats = await reader.stats()
        assert stats.pending == len(ids)
        assert len(stats.shards) == 4


async def test_cancel_and_a_burst_worker_in_a_process_that_has_not_heard() -> None:
    async with grown("memory://reshard-cancel", 1, 4) as (old, new):
        ids = await enqueue_in_turns(new, 8)
        far = [m for m in ids if shard(m) >= 1]
        [outcome] = await old.cancel(far[:1])
        assert outcome.status == "cancelled"  # not "not_found": it reread queue.json
        ran: list[str] = []
        worker = Worker(old, lambda p, ctx: ran.append(ctx.message_id), concurrency=4)
        await worker.run(burst=True)  # leaves only once the new shards are drained too
        assert sorted(ran) == sorted(set(ids) - {far[0]})


async def test_a_rate_limit_is_shared_over_the_shards_producers_write_to() -> None:
    clock = Shifted()
    q = await Queue.open("memory://reshard-rates", "jobs", shards=2, clock=clock)
    await q.reshard(8)
    q.set_rate_limit("80/s")
    assert [r.rate for r in q.context.rates] == [40.0]  # the new shards are empty yet
    clock.ahead = 10.0
    await q.claim()
    assert [r.rate for r in q.context.rates] == [10.0]
    await q.close()


async def test_a_reshard_to_the_count_another_just_set_changes_nothing() -> None:
    url = "memory://reshard-race"
    a = await Queue.open(url, "jobs", shards=2)
    b = await Queue.open(url, "jobs")
    first = await a.reshard(8)
    second = await b.reshard(8)  # b still held 2 shards: it read 8 in the CAS loop
    assert second.revision == first.revision
    assert second.grown_at == first.grown_at
    await a.close()
    await b.close()


async def test_shrinking_is_refused_and_the_same_count_changes_nothing() -> None:
    q = await Queue.open("memory://reshard-refused", "jobs", shards=4)
    with pytest.raises(ConfigurationError) as refused:
        await q.reshard(2)
    assert "shrinking it to 2 is refused" in str(refused.value)
    assert q.settings.shards == 4
    same = await q.reshard(4)
    assert same.revision == 0
    assert same.grown_from == 0
    with pytest.raises(ConfigurationError):
        await q.reshard(5000)
    await q.close()


async def test_growing_twice_keeps_producers_on_the_shards_workers_know() -> None:
    clock = Shifted()
    q = await Queue.open("memory://reshard-twice", "jobs", shards=2, clock=clock)
    await q.reshard(4)
    second = await q.reshard(8)  # before the first notice ran out
    assert second.grown_from == 2
    assert second.writable(clock()) == 2
    assert second.writable(second.grown_at) == 8
    await q.close()


async def test_reopening_with_the_count_it_was_created_with_still_works() -> None:
    url = "memory://reshard-reopen"
    q = await Queue.open(url, "jobs", shards=4)
    await q.reshard(16)
    again = await Queue.open(url, "jobs", shards=4)  # the code that created it
    assert again.settings.shards == 16
    with pytest.raises(ConfigurationError, match="has 16 shards, not 32"):
        await Queue.open(url, "jobs", shards=32)
    await again.close()
    await q.close()


async def test_the_notice_is_a_lease_of_a_running_cluster() -> None:
    q = await Queue.open("memory://reshard-cluster-notice", "jobs", shards=2)
    election = Election(q.storage, "jobs", "w0", q.clock, ttl=30.0, skew_margin=2.0)

    async def survey() -> registry.Survey:
        return registry.Survey(["w0"], revision=q.settings.revision)

    record = await election.step(survey)
    assert registry.notice(record) == pytest.approx(30.0)
    settings = await q.reshard(4)
    assert settings.grown_at - q.clock() == pytest.approx(32.0, abs=1.0)
    await q.close()


async def test_workers_learn_of_a_reshard_from_the_coordinator() -> None:
    url = "memory://reshard-learn"
    queues = [await Queue.open(url, "jobs", shards=2) for _ in range(3)]
    workers = [
        Worker(q, lambda p, ctx: None, polling=CLUSTER, worker_id=f"w{n}")
        for n, q in enumerate(queues)
    ]
    for w in workers:
        await w.cluster.step()
    admin = await Queue.open(url, "jobs")
    await admin.reshard(12)
    assert [q.settings.shards for q in queues] == [2, 2, 2]
    await workers[0].cluster.step()  # the coordinator reads queue.json as it renews
    assert queues[0].settings.shards == 12
    for w in workers[1:]:  # the others see its revision in the cluster object
        await w.cluster.step()
    await workers[0].cluster.step()
    for w in workers:
        await w.cluster.step()
    assert [q.settings.shards for q in queues] == [12, 12, 12]
    owned = [q.owned or frozenset() for q in queues]
    assert sorted(k for o in owned for k in o) == list(range(12))
    for q in [*queues, admin]:
        await q.close()


CLUSTER = Polling(poll_interval=0.01, heartbeat_interval=1.0)


async def test_a_reshard_under_load_loses_and_doubles_nothing(store_url: str) -> None:
    """Three workers and a producer run; the queue grows from 2 to 8 shards in the
    middle: every message runs exactly once, and the new shards carry some."""
    clock = Shifted()  # the producer's only: moving it must not expire leases
    producer = await Queue.open(store_url, "jobs", shards=2, clock=clock)
    served = [await Queue.open(store_url, "jobs", clock=time.time) for _ in range(3)]
    queues = [producer, *served]
    ran: Counter[str] = Counter()
    enqueued: list[str] = []
    done = asyncio.Event()
    expected = [-1]

    async def handle(payload: object, ctx: JobContext) -> None:
        ran.update([ctx.message_id])
        if sum(ran.values()) == expected[0]:
            done.set()

    workers = [Worker(q, handle, polling=CLUSTER, worker_id=f"w{n}") for n, q in enumerate(served)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    enqueued += await producer.enqueue_many(range(100))
    await producer.reshard(8)
    async with asyncio.timeout(60):  # two heartbeats, on a slow machine
        for w, q in zip(workers, served, strict=True):
            while q.settings.shards != 8:
                w.cluster.stepped.clear()
                enqueued += await producer.enqueue_many(range(5))
                await w.cluster.stepped.wait()
    clock.ahead = 30.0  # past the notice: producers write to all eight
    for _ in range(10):
        enqueued += await producer.enqueue_many(range(20))
    expected[0] = len(enqueued)
    if sum(ran.values()) < expected[0]:
        await done.wait()
    for w in workers:
        await w.stop()
    await asyncio.gather(*tasks)
    assert ran == Counter(enqueued)
    assert max(ran.values()) == 1
    assert {shard(m) for m in enqueued} == set(range(8))
    for q in queues:
        await q.close()


def test_reshard_command_grows_and_refuses_to_shrink(tmp_path: object) -> None:
    url = f"file://{tmp_path}/store"
    runner = CliRunner()
    created = runner.invoke(app, ["--url", url, "create", "jobs", "--shards", "4"])
    assert created.exit_code == 0, created.output
    grown = runner.invoke(app, ["--url", url, "reshard", "jobs", "--shards", "8", "--json"])
    assert grown.exit_code == 0, grown.output
    shown = json.loads(grown.output)
    assert (shown["shards_before"], shown["shards"], shown["changed"]) == (4, 8, True)
    refused = runner.invoke(app, ["--url", url, "reshard", "jobs", "--shards", "2"])
    assert isinstance(refused.exception, ConfigurationError)  # main() prints it, exit 2
    assert exit_code(refused.exception) == 2
    assert "shrinking it to 2 is refused" in str(refused.exception)
    config = runner.invoke(app, ["--url", url, "config", "jobs", "--json"])
    assert json.loads(config.output)["shards"] == 8
